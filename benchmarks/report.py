"""``BENCHMARKS.md`` from the results of one run.

Everything is generated except the block between the two ``HAND-WRITTEN``
markers, which is carried over from the file being replaced so the lead's
explanation survives ``make bench``.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.config import size_label

__all__ = ["HAND_BEGIN", "HAND_END", "render", "seconds", "write_report"]

HAND_BEGIN = "<!-- HAND-WRITTEN: kept by `make bench` when it rewrites this file -->"
HAND_END = "<!-- END HAND-WRITTEN -->"

HAND_TEMPLATE = """\
*Edit this block; the harness keeps it. The figures above are regenerated.*

What OPAL does on every run that a plain pandas or DuckDB query does not:

- **Process isolation.** The algorithm runs in a fresh child forked from a
  zygote that holds the dataset; the child drops to an unprivileged user,
  enters an empty network namespace, sets rlimits and a seccomp filter before
  it runs. The fork is cheap (copy-on-write); the hardening is fixed cost per
  run, visible in the small-run latency.
- **Restricted execution.** RestrictedPython guards every attribute access,
  item access and call the algorithm makes. Vectorised pandas work is barely
  affected; Python-level loops over rows would be.
- **Arrow IPC copy of the contributions.** The per-unit contributions leave
  the child as an Arrow IPC stream and become a pandas DataFrame again on the
  trusted side. This grows with the number of contribution rows (see the
  "contributions" column), not with the dataset: population_density and
  call_volume, with a row per subscriber-region-day, pay the most.
- **Per-unit bounding, unit check, noise, suppression.** The gate checks every
  contributed unit against the dataset's own unit column (the worker reads that
  column from Parquet on each run), keeps at most `max_groups_per_unit` groups
  per unit (a random choice), counts distinct units per cell, draws OpenDP
  noise and suppresses small cells. DuckDB's `count(DISTINCT)` does only the
  counting, on all cores.
- **Signature checks and the ledger.** Each run recomputes the bundle digest,
  verifies the author's signature and the reviewers' approvals, validates the
  parameters, reserves budget, and appends three signed entries (requested,
  started, finished), each committed with fsync, plus a signed checkpoint.
- **The queue.** The request crosses Redis to a Celery worker, the outcome
  comes back through the result backend.

What is *not* paid per run: loading the data. The worker's zygote reads the
dataset once and keeps it resident; the memory section shows what that costs.

TODO (lead): after regenerating on a quiet machine, say which of these
dominates at 10 M rows, and what would cut it (e.g. serving the unit column
from the zygote instead of re-reading Parquet; returning contributions in
shared memory instead of a pipe).
"""


# -- formatting -------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 0.01:
        return f"{value * 1e3:.1f} ms"
    if value < 1:
        return f"{value * 1e3:.0f} ms"
    if value < 100:
        return f"{value:.2f} s"
    return f"{value:.0f} s"


def _span(timing: dict[str, Any] | None) -> str:
    """``median (min–max)`` or why there is no figure."""
    if not timing:
        return "-"
    if "error" in timing:
        return "failed"
    if timing.get("n", 1) == 1:
        return seconds(timing["median"])
    return f"{seconds(timing['median'])} ({seconds(timing['min'])}–{seconds(timing['max'])})"


def _mb(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10e9:
        return f"{value / 1e9:.1f} GB"
    if value < 10e6:
        return f"{value / 1e6:.1f} MB"
    return f"{value / 1e6:,.0f} MB"


def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None) -> float | None:
    if not num or not den or "median" not in num or "median" not in den or den["median"] <= 0:
        return None
    return float(num["median"]) / float(den["median"])


def _x(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}×" if value < 100 else f"{value:.0f}×"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# -- sections ---------------------------------------------------------------------------


def _header(results: dict[str, Any]) -> list[str]:
    m, v, c = results["machine"], results.get("versions", {}), results["config"]
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if k not in ("python",))
    load = m.get("loadavg_start", [0, 0, 0])
    load_end = m.get("loadavg_end", load)
    quick = " **(quick smoke run: tiny sizes, not representative)**" if c.get("quick") else ""
    return [
        "# OPAL benchmarks",
        "",
        (f"Generated by `make bench` (`python -m benchmarks`) on {results['started']} in "
        f"{results.get('seconds', 0) / 60:.1f} min{quick}. Do not edit the figures by hand: run `make bench` "
        "again (the hand-written block in the last section is kept)."),
        "",
        (f"- **Machine:** {m.get('nproc')} CPUs ({m.get('cpu')}), {_mb(m.get('memory_bytes'))} memory, "
        f"{m.get('platform')}; load average {load[0]:.2f} at the start, {load_end[0]:.2f} at the end "
        "(a busy machine makes every figure noisier)."),
        f"- **Python** {v.get('python', '?')}; {libs}.",
        (f"- **What was run:** sizes {', '.join(size_label(s) for s in c['sizes'])}; in-process repetitions "
        f"{_reps(c['reps'])}, end-to-end repetitions {_reps(c['e2e_reps'])}; sections "
        f"{', '.join(c['sections'])}. Every figure is the median, with min–max in brackets."),
        ("- **Reproduce:** `make bench` (1 M and 10 M rows), `BENCH_FULL=1 make bench` "
         "(adds the large section: 10 M and 100 M rows in partitions), "
        "`BENCH_SIZES=1000000 make bench`, `python -m benchmarks --quick` (a tiny smoke run), "
        "`python -m benchmarks --only small` (some sections: their report goes to `bench-data/partial-report.md`). "
        "Datasets and the large ledger are cached in `bench-data/`; raw samples go to `bench-data/last-run.json`."),
        "",
    ]


def _reps(reps: dict[str, int]) -> str:
    return ", ".join(f"{n} at {label}" for label, n in reps.items())


def _datasets(results: dict[str, Any]) -> list[str]:
    rows = []
    for d in results["datasets"]:
        rows.append([
            d["label"], f"{d['rows']:,}", f"{d['subscribers']:,}", _mb(d["file_bytes"]),
            _mb(d.get("in_memory_bytes")),
            seconds(d["generation_seconds"]) + (" (cached)" if d.get("cached") else ""),
            _mb(d.get("generation_peak_bytes")),
            seconds(d.get("load_seconds")),
            seconds(d.get("runtime_start_seconds")),
        ])
    return [
        "## Datasets",
        "",
        ("Synthetic CDR from `opal.data.synth.synthesize` (14 days, 5 events per subscriber-day, seed "
        f"{results['config']['seed']}). Generation runs in a process of its own; its peak resident memory "
        "is that process's VmHWM. \"Cached\" generation times are from when the file was made."),
        "",
        _table(["size", "rows", "subscribers", "Parquet", "in memory (pandas)", "generated in",
                "generator peak memory", "read into pandas", "sandbox zygote start"], rows),
        "",
    ]


def _algorithms(results: dict[str, Any]) -> list[str]:
    out = [
        "## Reference algorithms: OPAL vs pandas vs DuckDB",
        "",
        "Same Parquet file, same parameters, one process driving them all ((a′) in a helper process), interleaved:",
        "",
        "- **(a) pandas**: the algorithm's own `contributions()` called directly on the DataFrame in memory.",
        ("- **(a′) pandas, warm process**: the same call in a process whose allocator keeps all it frees, each "
        "algorithm run once before timing (`benchmarks.warm_direct`): the best case for pandas on this "
        "machine, so b/a′ is what the sandbox itself costs."),
        ("- **(b) sandbox**: the same source through `opal.sandbox.Runtime` (data resident in the zygote; "
        "fresh hardened child per run; contributions returned over Arrow IPC)."),
        ("- **(c) + gate**: (b) plus reading the unit column for the unit check and `opal.release.release` "
        "(bounding, noise, suppression), as the worker does."),
        ("- **(d) end to end**: `request_run` (signed, in the ledger) → Celery/Redis → `opal worker start` "
        "subprocess with the dataset resident → trust checks, budget, sandbox, gate, ledger → result "
        "back through Redis."),
        ("- **(e) DuckDB**: the equivalent SQL over the Parquet file (listed at the end), which reads the file on "
        "every query and uses every core. \"DuckDB = pandas\" checks that its figures equal the exact "
        "(un-noised, unbounded) aggregates of (a)."),
        "",
    ]
    for label, rows in results["algorithms"].items():
        if not rows:
            continue
        ds: dict[str, Any] = next((d for d in results["datasets"] if d["label"] == label), {})
        out += [f"### {label} rows ({ds.get('rows', 0):,})", ""]
        table = []
        for r in rows:
            failed = r.get("errors", {})

            def cell(key: str, part: str, r: dict[str, Any] = r, failed: dict[str, str] = failed) -> str:
                return "failed" if part in failed and key not in r else _span(r.get(key))

            table.append([
                r["name"], f"{r['contribution_rows']:,}" if "contribution_rows" in r else "-",
                cell("a", "a"), cell("a2", "a2"), cell("b", "b"),
                "failed" if ("b" in failed or "gate" in failed) and "c" not in r else _span(r.get("c")),
                cell("d", "d"), cell("e", "e"),
                _x(_ratio(r.get("b"), r.get("a"))), _x(_ratio(r.get("b"), r.get("a2"))),
                _x(_ratio(r.get("d"), r.get("a"))),
                _x(_ratio(r.get("d"), r.get("e"))),
                str(r.get("duckdb_vs_pandas", "-")),
            ])
        out += [
            _table(["algorithm", "contributions", "(a) pandas", "(a′) warm", "(b) sandbox", "(c) + gate",
                    "(d) end to end", "(e) DuckDB", "b/a", "b/a′", "d/a", "d/e", "DuckDB = pandas"], table,
                   "lrrrrrrrrrrrl"),
            "",
        ]
        names = {"a": "(a) pandas", "a2": "(a′) pandas, warm process", "b": "(b) sandbox", "gate": "the gate",
                 "d": "(d) end to end", "e": "(e) DuckDB"}
        errors = [f"- {r['name']}, {names.get(part, part)}: {message}"
                  for r in rows for part, message in r.get("errors", {}).items()]
        if errors:
            out += ["Failed measurements (the reason, as OPAL reported it):", "", *errors, ""]
    return out


def _times(value: int | None, data: int | None) -> str:
    """``value`` and its multiple of the dataset's in-memory size ``data``."""
    if not value or not data:
        return "-"
    return f"{_mb(value)} ({value / data:.1f}×)"


def _memory(results: dict[str, Any]) -> list[str]:
    rows = []
    for label, w in results.get("workers", {}).items():
        mem = w.get("memory") or {}
        roles = mem.get("by_role_peak_bytes", {})
        data = w.get("in_memory_bytes")
        if "error" in w:
            rows.append([label, _mb(data), "failed: " + w["error"], "", "", "", "", "", ""])
            continue
        rows.append([
            label, _mb(data),
            _times(roles.get("sandbox zygote (resident data)"), data),
            _times(roles.get("celery pool process"), data),
            _times(roles.get("worker main process"), data),
            _times(roles.get("sandbox run child"), data),
            _times(mem.get("tree_rss_peak_bytes"), data),
            _times(mem.get("tree_pss_peak_bytes"), data),
            seconds(w.get("first_run_seconds")),
        ])
    if not rows:
        return []
    return [
        "## Worker memory",
        "",
        ("Peak resident memory (VmHWM from `/proc`) of each process of the `opal worker start` tree while it "
        "served its first run and one untimed run of every algorithm (the timed runs go unsampled: a sample "
        "takes CPU from the runs it measures), and as a multiple of the dataset's in-memory size (pandas, deep). The "
        "zygote holds the data; run children share its pages copy-on-write, so the tree sum of RSS counts "
        "the data once per process that reads it (a run child reading all of it counts it twice). The tree's "
        "PSS peak counts every page once, shared pages split between the processes that map them. "
        "Run children are sampled every 50 ms and may be missed if shorter."),
        "",
        _table(["size", "dataset in memory", "sandbox zygote", "Celery pool process", "worker main",
                "largest run child", "tree sum (RSS)", "tree (PSS)", "worker start to first release"], rows),
        "",
    ]


def _gate(results: dict[str, Any]) -> list[str]:
    g = results.get("gate")
    if not g:
        return []
    out = ["## Release gate alone vs DuckDB", ""]
    if "error" in g:
        return out + [f"Failed: {g['error']}", ""]
    out += [
        (f"{g['rows']:,} contribution rows, {g['units']:,} units, {g['groups']:,} groups "
        f"(table from `{g['table_source']}`). The gate: unit check against the known units, bounding to "
        f"{g['max_groups_per_unit']} groups per unit, distinct-unit counts over the public domain of "
        f"{g['groups']:,} cells, OpenDP noise on every cell, suppression of small noisy counts. "
        "DuckDB: `SELECT cell, count(DISTINCT msisdn) FROM contributions GROUP BY cell` over the same "
        "in-memory table. Run alternately."),
        "",
        _table(["gate (release, count)", "DuckDB count(DISTINCT)", "gate / DuckDB"],
               [[_span(g["gate"]), _span(g["duckdb"]), _x(_ratio(g["gate"], g["duckdb"]))]], "rrr"),
        "",
    ]
    return out


def _partitioned(results: dict[str, Any]) -> list[str]:
    sizes = results.get("partitioned") or {}
    if not sizes:
        return []
    out = ["## Partitioned datasets: one run fanned out over both cores", ""]
    for label, p in sizes.items():
        if "error" in p:
            out += [f"{label}: failed: {p['error']}", ""]
            continue
        def peak(worker: dict[str, Any]) -> list[str]:
            memory = worker.get("memory") or {}
            return [_mb(memory.get("tree_pss_peak_bytes")), _mb(memory.get("tree_rss_peak_bytes"))]
        out += [
            (f"{label} rows ({p['rows']:,}) in {p['parts']} partitions (largest {p['largest_part_rows']:,} rows, "
             f"partitioned in {seconds(p['partition_seconds'])}). End to end through one worker of two pool "
             "processes: the one file (one task a run) against the partitions (a task per partition, "
             "one combining task). DuckDB (all cores) and pandas (in memory) on the one file."),
            "",
            _table(
                ["algorithm", "one file", "partitioned", "partitioned / one file", "DuckDB",
                 "partitioned / DuckDB", "pandas", "partitioned / pandas"],
                [[a["name"], _span(a["one_file"]), _span(a["partitioned"]),
                  _x(_ratio(a["partitioned"], a["one_file"])), _span(a["duckdb"]),
                  _x(_ratio(a["partitioned"], a["duckdb"])), _span(a["pandas"]),
                  _x(_ratio(a["partitioned"], a["pandas"]))] for a in p["algorithms"]],
                "lrrrrrrr",
            ),
            "",
            _table(
                ["worker", "tree PSS peak", "tree RSS peak (shared pages counted per process)"],
                [["one file, all resident", *peak(p["one_file_worker"])],
                 ["partitions, all resident", *peak(p["partitioned_worker"])],
                 [f"partitions, --memory {p['bounded_memory_flag']} (first algorithm, "
                  f"{_span(p['bounded_seconds'])} a run)", *peak(p["bounded_worker"])]],
                "lrr",
            ),
            "",
        ]
    return out


def _large(results: dict[str, Any]) -> list[str]:
    lg = results.get("large")
    if not lg:
        return []
    out = ["## 100 M rows: partitions, two pool processes, memory bounded by a partition", ""]
    if "error" in lg:
        return out + [f"Failed: {lg['error']}", ""]
    for label, p in lg["sizes"].items():
        worker = p.get("worker") or {}
        made = ("cached" if p["generation_cached"] else "made now") + (
            f", {seconds(p['generation_seconds'])}, generator peak {_mb(p['generation_peak_bytes'])}")
        out += [
            (f"{label} rows ({p['rows']:,}) synthesized straight into {p['parts']} partitions "
             f"({_mb(p['parquet_bytes'])} of Parquet; {made}); largest partition {p['largest_part_rows']:,} rows, "
             f"{_mb(p['largest_part_memory_bytes'])} in memory. Registered (every partition hashed, units "
             f"checked disjoint) in {seconds(p['register_seconds'])}. One worker of two pool processes with "
             f"`--memory {p['memory_flag']}` (about one partition resident per pool process: a task whose "
             f"partition is not resident reloads its pool process's zygote with it); first release "
             f"{seconds(p.get('first_release_seconds'))} "
             f"after the worker started. Worker tree peak: {_mb(worker.get('tree_pss_peak_bytes'))} PSS, "
             f"{_mb(worker.get('tree_rss_peak_bytes'))} RSS (sampled over one untimed run of every algorithm; "
             f"the timed runs go unsampled). DuckDB reads the same partition files (all cores)."),
            "",
            _table(["algorithm", "OPAL end to end", "DuckDB", "OPAL / DuckDB"],
                   [[a["name"], _span(a["opal"]), _span(a["duckdb"]), _x(_ratio(a["opal"], a["duckdb"]))]
                    for a in p["algorithms"]], "lrrr"),
            "",
        ]
    t = lg["targets"]
    verdict = {True: "met", False: "**not met**"}
    out += [
        f"Targets (issue #18), {lg['big_label']} against {lg['small_label']}, same configuration:",
        "",
        _table(["algorithm", f"OPAL / DuckDB at {lg['big_label']} (target ≤ 1.5)",
                f"t({lg['big_label']}) / t({lg['small_label']}) (target ≤ 11)"],
               [[a["name"], f"{_x(a['ratio'])} ({verdict[a['ratio_met']]})",
                 f"{a['growth']:.1f} ({verdict[a['growth_met']]})"] for a in t["algorithms"]], "lrr"),
        "",
        (f"Worker tree peak RSS at {lg['big_label']}: {_mb(t['rss_peak_bytes'])} against a bound of "
         f"{_mb(t['rss_bound_bytes'])} (2 GB plus twice the largest resident partition): "
         f"{verdict[bool(t['rss_met'])]}. The RSS sum counts every page a run child shares with its "
         f"zygote (the data it reads) once per process; counting each page once (PSS): "
         f"{_mb(t['pss_peak_bytes'])}, {verdict[(t['pss_peak_bytes'] or 0) <= t['rss_bound_bytes']]}."),
        "",
    ]
    return out


def _utility(results: dict[str, Any]) -> list[str]:
    u = results.get("utility")
    if not u:
        return []
    out = ["## Utility on small data (public domains)", ""]
    if "error" in u:
        return out + [f"Failed: {u['error']}", ""]
    out += [
        (f"`population_density` on {u['subscribers']:,} subscribers x {u['days']} days at ε = {u['epsilon']:g}, "
         f"{u['runs']} runs through the sandbox and the gate: {u['cells']} region x day cells (smallest true "
         f"count {u['min_true_count']}). Released: {u['released_share_mean']:.1%} of cells on average, "
         f"{u['released_share_min']:.1%} in the worst run. The stated {u['stated_confidence']:.0%} intervals "
         f"held the true count {u['interval_coverage']:.1%} of the time (median width "
         f"{u['interval_width_median']:.0f} subscribers)."),
        "",
    ]
    return out


def _ledger(results: dict[str, Any]) -> list[str]:
    led = results.get("ledger")
    if not led:
        return []
    rows = []
    for a in led.get("appends", []):
        if "per_second" in a:
            rows.append([f"durable appends, {a['processes']} process(es), one commit each",
                         (f"{a['per_second']:,.0f} entries/s ({a['entries']:,} in {a['seconds']:.1f} s; "
                         f"`{a.get('source', '?')}`)")])
        else:
            rows.append([f"durable appends, {a.get('processes')} process(es)", f"failed: {a.get('error')}"])
    v = led.get("verify") or {}
    if "cli" in v:
        rate = v["entries"] / v["verify"]["median"] if v["verify"]["median"] else 0
        rows.append([f"`opal ledger verify`, {v['entries']:,} entries (command wall time)", _span(v["cli"])])
        rows.append(["  of which verification itself (reported)", f"{_span(v['verify'])}, {rate:,.0f} entries/s"])
    elif "error" in v:
        rows.append(["`opal ledger verify`", f"failed: {v['error']}"])
    p = led.get("proofs") or {}
    if "proof" in p:
        rows.append([f"inclusion proof + verification, warm (tree of {p['entries']:,})", _span(p["proof"])])
        rows.append(["building the Merkle tree from the database (once per process)",
                     seconds(p["tree_build_seconds"])])
        rows.append(["`opal ledger prove inclusion` (cold command)", _span(p["cli"])])
    elif "error" in p:
        rows.append(["inclusion proofs", f"failed: {p['error']}"])
    g = led.get("report") or {}
    if "cli" in g:
        rows.append([f"`opal report` (governance page), {g['entries']:,} entries, {g['runs']:,} runs (bound: 10 s)",
                     f"{_span(g['cli'])}, page {g['page_bytes']:,} bytes"])
    elif "error" in g:
        rows.append(["`opal report`", f"failed: {g['error']}"])
    if led.get("cli_startup") and "median" in led["cli_startup"]:
        rows.append(["`opal --help` (interpreter + CLI start-up, in every command above)",
                     _span(led["cli_startup"])])
    if led.get("python_startup") and "median" in led["python_startup"]:
        rows.append(["`python -c pass` (the interpreter alone: the floor under every command)",
                     _span(led["python_startup"])])
    b = led.get("build") or {}
    if "build_seconds" in b:
        rows.append([f"building the {b['entries']:,}-entry test ledger (signing; once, then cached)",
                     f"{seconds(b['build_seconds'])} (`{b.get('source', '?')}`)"])
    return ["## Ledger", "", "SQLite, WAL, `synchronous=FULL`, Ed25519 signatures (the default node).", "",
            _table(["measure", "result"], rows, "lr"), ""]


def _small(results: dict[str, Any]) -> list[str]:
    s = results.get("small")
    if not s:
        return []
    out = ["## Small runs: throughput and added latency", ""]
    if "error" in s:
        return out + [f"Failed: {s['error']}", ""]
    e2e, direct = s.get("end_to_end"), s.get("direct")
    added = e2e["median"] - direct["median"] if e2e and direct else None
    rows = [
        ["(a) pandas, in process", _span(direct)],
        ["(b) sandbox run", _span(s.get("sandbox"))],
        ["per-run fixed cost: a trivial algorithm on a warm runtime (fork, PID/IPC/mount namespaces, "
         "empty root, uid, rlimits, seccomp, compile, result; budget 50 ms)", _span(s.get("fixed_cost"))],
        ["release gate", _span(s.get("gate"))],
        ["(d) end to end, one run at a time", _span(e2e)],
        ["  of which the request (signed, appended to the ledger, queued)", _span(s.get("request"))],
        ["**added latency per run** (d − a, medians)", f"**{seconds(added)}**"],
        [(f"identical repeat, served from the cache ({s.get('cached_served', '?')} of "
          f"{(s.get('cached_repeat') or {}).get('n', '?')} were)"), _span(s.get("cached_repeat"))],
    ]
    for key, label in (("concurrency_1", "1 pool process"), ("concurrency_2", "2 pool processes")):
        t = s.get(key)
        if t:
            rows.append([f"throughput, {t['runs']} runs dispatched at once, {label}",
                         f"{t['runs_per_second']:.1f} runs/s ({t['released']} released)"])
    loop = s.get("shell_loop")
    if loop:
        rows.append([f"`opal run --no-wait`, {loop['runs']} from a bash loop (a process each: interpreter, "
                     "imports, signed request, ledger append, Celery message), submitted",
                     f"{loop['runs_per_second']:.1f} runs/s ({loop['released']} released)"])
    loop = s.get("shell_loop_server")
    if loop:
        rows.append(["the same loop with `opal cli-server` running (each command forked from a warm "
                     "process: no imports), submitted",
                     f"{loop['runs_per_second']:.1f} runs/s ({loop['released']} released)"])
    out += [
        (f"`{s['algorithm']}` with {s['params']} on a {s['dataset_rows']:,}-row dataset, {s['runs']} runs each; "
        "one worker, each run with its own ε so none is served from the cache (except the cached repeat)."),
        "",
        _table(["measure", "result"], rows, "lr"),
        "",
    ]
    return out


def _why(results: dict[str, Any]) -> list[str]:
    out = ["## Where OPAL is slower and why", "", "### From the figures above (generated)", ""]
    bullets: list[str] = []
    for label, rows in results["algorithms"].items():
        complete = [r for r in rows if all(k in r for k in ("a", "b", "c", "d", "gate_with_units"))]
        if not complete:
            continue
        ratios = [(r["d"]["median"] / r["a"]["median"], r["name"]) for r in complete if r["a"]["median"] > 0]
        sandbox = sum(max(0.0, r["b"]["median"] - r["a"]["median"]) for r in complete)
        gate = sum(r["gate_with_units"]["median"] for r in complete)
        pipeline = sum(max(0.0, r["d"]["median"] - r["c"]["median"]) for r in complete)
        extra = sandbox + gate + pipeline
        if not ratios or extra <= 0:
            continue
        lo, hi = min(ratios), max(ratios)
        parts = sorted([(sandbox, "the sandbox (b − a: process isolation, restricted execution, Arrow IPC copy)"),
                        (gate, "the release gate (run's unit count, domain check, bounding, noise, suppression)"),
                        (pipeline, "the pipeline (d − c: queue, trust checks, budget, ledger, result backend)")],
                       reverse=True)
        shares = "; ".join(f"{100 * v / extra:.0f} % {name}" for v, name in parts)
        bullets.append(
            f"- **{label} rows:** end to end takes {lo[0]:.1f}× ({lo[1]}) to {hi[0]:.1f}× ({hi[1]}) the time of "
            f"pandas, median {_median([x for x, _ in ratios]):.1f}×. Of the time OPAL adds, summed over the "
            f"algorithms: {shares}."
        )
        inverted = [r["name"] for r in complete if r["d"]["median"] < r["c"]["median"]]
        if inverted:
            bullets.append(
                f"  For {', '.join(inverted)}, end to end was quicker than (c) measured in the benchmark's own "
                "process: the worker's zygote and run children are separate processes with their own heaps, "
                "and with few repetitions on a shared machine the noise is of that order. Read the pipeline "
                "share above as a lower bound."
            )
        big = max(complete, key=lambda r: r.get("contribution_rows", 0))
        if big.get("contribution_rows"):
            bullets.append(
                f"  The most contributions come from {big['name']} ({big['contribution_rows']:,} rows): its "
                f"sandbox run is {_x(_ratio(big['b'], big['a']))} pandas and its gate "
                f"{seconds(big['gate_with_units']['median'])}, of which reading the unit column "
                f"{seconds(big['units']['median'])}."
            )
        duck = [(r["d"]["median"] / r["e"]["median"], r["name"]) for r in complete if "e" in r and r["e"]["median"] > 0]
        faster = [name for x, name in duck if x < 1]
        if duck:
            bullets.append(
                f"  Against DuckDB SQL on the Parquet file, end to end is {min(duck)[0]:.1f}× to "
                f"{max(duck)[0]:.1f}× (median {_median([x for x, _ in duck]):.1f}×)"
                + (f"; OPAL is faster for {', '.join(faster)}." if faster else ".")
                + " DuckDB reads only the columns it needs, on every core, and returns aggregates; OPAL's "
                "algorithms are single-threaded pandas that return per-unit rows."
            )
    g = results.get("gate")
    if g and "gate" in g:
        bullets.append(
            f"- **Release gate alone** on {g['rows']:,} contribution rows: {_x(_ratio(g['gate'], g['duckdb']))} "
            "DuckDB's `count(DISTINCT)`; the extra is the unit check, per-unit bounding (a random choice of "
            "groups per unit), noise and suppression."
        )
    s = results.get("small")
    if s and "fixed_cost" in s:
        verdict = "within" if s["fixed_cost"]["median"] <= 0.050 else "over"
        bullets.append(
            f"- **Sandbox fixed cost per run** (warm runtime, trivial algorithm, layers "
            f"{', '.join(s.get('layers', []))}): {seconds(s['fixed_cost']['median'])}, {verdict} the 50 ms budget."
        )
    if s and "end_to_end" in s and "direct" in s:
        fixed = s["end_to_end"]["median"] - s["direct"]["median"]
        bullets.append(
            f"- **Fixed cost per run** on small data: {seconds(fixed)} end to end over pandas "
            f"(sandbox run {seconds(s['sandbox']['median'])} vs pandas {seconds(s['direct']['median'])}; "
            f"request {seconds(s['request']['median'])}); an identical repeat is served from the cache in "
            f"{seconds(s['cached_repeat']['median'])}."
        )
    led = results.get("ledger") or {}
    appends = [a for a in led.get("appends", []) if "per_second" in a]
    if appends:
        bullets.append(
            f"- **Ledger:** a run appends three signed entries, each a durable commit; at "
            f"{appends[0]['per_second']:,.0f} appends/s that bounds a node to roughly "
            f"{appends[0]['per_second'] / 3:,.0f} runs/s before anything else."
        )
    if not bullets:
        bullets.append("- (no complete set of measurements to compare)")
    return out + bullets + [""]


def _sql(results: dict[str, Any]) -> list[str]:
    out = ["## The DuckDB SQL used for (e)", "",
           ("`cdr` is `read_parquet('<the dataset>')`; `$name` parameters are the run's parameters (night hours "
           "are the algorithms' defaults, 20 to 7)."), ""]
    for name, sql in results.get("sql", {}).items():
        out += [f"<details><summary>{name}</summary>", "", "```sql", sql, "```", "", "</details>", ""]
    return out


def _hand_written(previous: Path | None) -> str:
    if previous is not None and previous.exists():
        text = previous.read_text(encoding="utf-8")
        if HAND_BEGIN in text and HAND_END in text:
            return text.split(HAND_BEGIN, 1)[1].split(HAND_END, 1)[0].strip("\n") + "\n"
    return HAND_TEMPLATE


def render(results: dict[str, Any], *, previous: Path | None = None) -> str:
    """The whole report; the hand-written block comes from ``previous`` when it has one."""
    lines = (
        _header(results) + _datasets(results) + _algorithms(results) + _memory(results) + _partitioned(results)
        + _large(results) + _gate(results) + _utility(results) + _ledger(results) + _small(results) + _why(results)
        + ["### Why (hand-written)", "", HAND_BEGIN, _hand_written(previous).rstrip("\n"), HAND_END, ""]
        + _sql(results)
    )
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
