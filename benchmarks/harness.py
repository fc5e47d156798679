"""The benchmark run: measure every section, print progress, write the report.

Each measurement that fails is recorded as ``{"error": ...}`` and the run goes
on; the report shows it in place of the figure.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import algorithms as algos
from benchmarks.config import BenchConfig, child_env, size_label
from benchmarks.datasets import BenchDataset, ensure_dataset, load_frame
from benchmarks.timing import Stopwatch, Timing, measure

__all__ = ["main", "run"]

T = TypeVar("T")
_LIBRARIES = ("pandas", "numpy", "pyarrow", "duckdb", "celery", "kombu", "redis", "opendp", "RestrictedPython",
              "cryptography")


def _error(exc: BaseException) -> dict[str, Any]:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return {"error": f"{type(exc).__name__}: {message}".splitlines()[0][:300]}


def _attempt(clock: Stopwatch, what: str, fn: Callable[[], T]) -> T | dict[str, Any]:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001  # a failed measurement is a result, not the end of the run
        clock.say(f"FAILED {what}: {_error(exc)['error']}")
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
        return _error(exc)


def _fmt(timing: dict[str, Any] | None) -> str:
    from benchmarks.report import seconds

    if not timing or "median" not in timing:
        return "-"
    return f"{seconds(timing['median'])} ({timing['n']} runs)"


# -- machine ---------------------------------------------------------------------


def _meminfo_bytes(field_name: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions(broker_url: str | None) -> dict[str, str]:
    versions = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for name in ("opal", *_LIBRARIES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    if broker_url:
        try:
            import redis

            info = redis.Redis.from_url(broker_url, socket_timeout=2).info("server")
            versions["redis-server"] = str(info.get("redis_version", "?"))
        except Exception:  # noqa: BLE001  # nice to have; the broker is checked where it is used
            versions["redis-server"] = "unknown"
    return versions


def _machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": _meminfo_bytes("MemTotal"),
        "memory_available_bytes": _meminfo_bytes("MemAvailable"),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


# -- algorithms, in process ------------------------------------------------------------


def _measure_algorithm(algorithm: algos.Algorithm, *, frame: Any, runtime: Any, con: Any, path: Path,
                       reps: int, warm_direct: Callable[[str], float] | None = None) -> dict[str, Any]:
    """(a), (b), the gate and (e) for one algorithm, alternating within each
    repetition. A contender that fails (a sandbox limit, say) is recorded in
    ``errors`` and left out of the later repetitions; the others go on."""

    from opal.devloop import dataset_domains
    from opal.release import release
    from opal.release.domains import resolve
    from opal.release.policy import ReleasePolicy
    from opal.sandbox.pseudonyms import RunPseudonyms, for_run

    policy = ReleasePolicy()
    domains = resolve(algorithm.bundle.manifest.privacy.groups, dataset_domains(path))
    row: dict[str, Any] = {"name": algorithm.name, "params": algorithm.params}
    errors: dict[str, str] = {}
    samples: dict[str, list[float]] = {"a": [], "a2": [], "b": [], "units": [], "gate": [], "e": []}
    contributions = sql_result = None
    own = algorithm.view(frame)  # in the form the bundle asks for, as the sandbox shows it
    for _ in range(reps):
        if "a" not in errors:
            try:
                t = time.perf_counter()
                contributions = algorithm.direct(own)
                samples["a"].append(time.perf_counter() - t)
                row["contribution_rows"] = len(contributions)
            except Exception as exc:  # noqa: BLE001  # the algorithm itself failed: recorded, not fatal
                errors["a"] = _error(exc)["error"]
        if warm_direct is not None and "a2" not in errors:
            try:
                samples["a2"].append(warm_direct(algorithm.name))
            except Exception as exc:  # noqa: BLE001  # recorded, not fatal
                errors["a2"] = _error(exc)["error"]
        if "b" not in errors:
            try:
                # As a worker runs it: on per-run pseudonyms of the unit column.
                spec = for_run(table="cdr", column="msisdn")
                t = time.perf_counter()
                manifest = algorithm.bundle.manifest
                sandboxed = runtime.run(source=algorithm.bundle.source, entrypoint=manifest.entrypoint,
                                        params=algorithm.params, pseudonyms=spec, read=manifest.read_map(),
                                        categorical=manifest.categorical_map())
                samples["b"].append(time.perf_counter() - t)
                row["sandbox_rows"] = len(sandboxed)
            except Exception as exc:  # noqa: BLE001  # e.g. a sandbox limit at 100 M rows
                errors["b"] = _error(exc)["error"]
            else:
                try:
                    # What the worker does for the unit check (opal.sandbox.pseudonyms.run_pseudonymised).
                    t = time.perf_counter()
                    units = RunPseudonyms.of(spec, count=runtime.unit_count("msisdn"))
                    samples["units"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    released = release(sandboxed, privacy=algorithm.bundle.manifest.privacy, domains=domains,
                                       policy=policy, epsilon=1.0, known_units=units)
                    samples["gate"].append(time.perf_counter() - t)
                    row["cells_released"] = released.cells_released
                    row["cells_suppressed"] = released.cells_suppressed
                except Exception as exc:  # noqa: BLE001  # e.g. the gate refusing too many cells
                    errors["gate"] = _error(exc)["error"]
                del sandboxed
        if "e" not in errors:
            try:
                t = time.perf_counter()
                sql_result = algos.run_sql(con, algorithm)
                samples["e"].append(time.perf_counter() - t)
            except Exception as exc:  # noqa: BLE001  # recorded, not fatal
                errors["e"] = _error(exc)["error"]
    if contributions is not None and sql_result is not None:
        row["duckdb_vs_pandas"] = algos.compare(algorithm, contributions, sql_result)
    timing = {k: Timing(samples=tuple(v)) for k, v in samples.items() if v}
    for key, value in timing.items():
        row[key] = value.to_dict()
    if all(k in timing for k in ("b", "units", "gate")) and len({timing[k].n for k in ("b", "units", "gate")}) == 1:
        row["gate_with_units"] = (timing["units"] + timing["gate"]).to_dict()
        row["c"] = (timing["b"] + timing["units"] + timing["gate"]).to_dict()
    if errors:
        row["errors"] = errors
    return row


class _WarmDirect:
    """(a′): ``benchmarks.warm_direct`` in a process of its own, one call per line."""

    def __init__(self, path: Path) -> None:
        import subprocess

        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "benchmarks.warm_direct", str(path)],
            env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def __call__(self, name: str) -> float:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(name + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the warm direct process ended (exit {self._proc.wait()})")
        return float(line)

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=60)


def _in_process(config: BenchConfig, ds: BenchDataset, algorithms: list[algos.Algorithm],
                clock: Stopwatch) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(a) pandas, (b) sandbox, gate, (e) DuckDB for every algorithm; runs
    interleaved per repetition so they share the machine's load alike."""
    from opal.sandbox import Runtime

    reps = config.reps(ds.target_rows)
    frame, load_seconds, in_memory = load_frame(ds.path)
    info: dict[str, Any] = {"load_seconds": load_seconds, "in_memory_bytes": in_memory}
    clock.say(f"{ds.label}: loaded into pandas in {load_seconds:.2f}s, {in_memory / 1e6:.0f} MB in memory")
    t0 = time.perf_counter()
    runtime = Runtime(tables={"cdr": ds.path})
    info["runtime_start_seconds"] = time.perf_counter() - t0
    clock.say(f"{ds.label}: sandbox zygote up (data resident) in {info['runtime_start_seconds']:.2f}s")
    con = algos.duckdb_connect(ds.path)
    warm_direct = _WarmDirect(ds.path)
    rows: list[dict[str, Any]] = []
    try:
        for algorithm in algorithms:
            row = _measure_algorithm(algorithm, frame=frame, runtime=runtime, con=con, path=ds.path, reps=reps,
                                     warm_direct=warm_direct)
            for part, message in row.get("errors", {}).items():
                clock.say(f"FAILED {ds.label} {algorithm.name} ({part}): {message}")
            clock.say(
                f"{ds.label} {algorithm.name}: (a) pandas {_fmt(row.get('a'))}  (b) sandbox {_fmt(row.get('b'))}  "
                f"(c) +gate {_fmt(row.get('c'))}  (e) duckdb {_fmt(row.get('e'))}  "
                f"[duckdb {row.get('duckdb_vs_pandas', '-')}]"
            )
            rows.append(row)
    finally:
        warm_direct.close()
        runtime.close()
        con.close()
        del frame
        gc.collect()
    return rows, info


# -- algorithms, end to end --------------------------------------------------------------


def _end_to_end(config: BenchConfig, deployment: Any, ds: BenchDataset, algorithms: list[algos.Algorithm],
                rows: list[dict[str, Any]], clock: Stopwatch) -> dict[str, Any]:
    """(d) for every algorithm through a worker holding ``ds``; fills ``rows``
    in place and returns the worker's start-up time and memory."""
    name = f"cdr_{ds.label.lower().replace('.', '_')}"
    deployment.register(name, ds.path)
    reps = config.e2e_reps(ds.target_rows)
    info: dict[str, Any] = {"dataset": name}
    t0 = time.perf_counter()
    deployment.start_worker(name)
    try:
        first = deployment.run(algorithms[0], name, timeout=1800)
        info["first_run_seconds"] = time.perf_counter() - t0
        if first.state != "released":
            raise RuntimeError(f"warm-up run ended {first.state}: {first.error}")
        clock.say(f"{ds.label}: worker up, data resident, first run released after {info['first_run_seconds']:.1f}s")
        # memory: one untimed run of every algorithm, sampled; the timed runs go
        # unsampled (a sample costs the machine CPU: benchmarks.partitioned.serve)
        for algorithm in algorithms:
            deployment.run(algorithm, name)
        info["memory"] = deployment.stop_sampling()
        by_name = {r["name"]: r for r in rows}
        for algorithm in algorithms:
            row = by_name.get(algorithm.name)
            if row is None:
                row = by_name[algorithm.name] = {"name": algorithm.name, "params": algorithm.params}
                rows.append(row)
            totals, requests = [], []
            try:
                for _ in range(reps):
                    timing = deployment.run(algorithm, name)
                    if timing.state != "released":
                        raise RuntimeError(f"run ended {timing.state}: {timing.error}")
                    totals.append(timing.seconds)
                    requests.append(timing.request_seconds)
                row["d"] = Timing(samples=tuple(totals)).to_dict()
                row["d_request"] = Timing(samples=tuple(requests)).to_dict()
                clock.say(f"{ds.label} {algorithm.name}: (d) end to end {_fmt(row['d'])}")
            except Exception as exc:  # noqa: BLE001  # record it and go on with the next algorithm
                row.setdefault("errors", {})["d"] = _error(exc)["error"]
                clock.say(f"FAILED {ds.label} {algorithm.name} end to end: {row['errors']['d']}")
    finally:
        stopped = deployment.stop_worker()
        info["memory"] = info.get("memory") or stopped
    return info


# -- small runs ---------------------------------------------------------------------------


_TRIVIAL = "def contributions(data, params):\n    return data.cdr[['msisdn']].head(1)\n"
# issue #15: fork + namespaces + empty root + seccomp must stay within this per run
FIXED_COST_BUDGET = 0.050


def _small_runs(config: BenchConfig, deployment: Any, algorithms: list[algos.Algorithm],
                clock: Stopwatch) -> dict[str, Any]:
    """Latency and throughput of many small runs, and what OPAL adds to each."""
    from opal.devloop import dataset_domains
    from opal.release import release
    from opal.release.domains import resolve
    from opal.release.policy import ReleasePolicy
    from opal.sandbox import Runtime
    from opal.sandbox.pseudonyms import RunPseudonyms, for_run

    ds = ensure_dataset(config.data_dir, config.small_rows, seed=config.seed, days=config.days, say=clock.say)
    algorithm = next(a for a in algorithms if a.name == "population_density")
    n = config.small_runs
    result: dict[str, Any] = {"dataset_rows": ds.rows, "algorithm": algorithm.name, "params": algorithm.params,
                              "runs": n}
    frame, _, _ = load_frame(ds.path)
    direct, _ = measure(partial(algorithm.direct, algorithm.view(frame)), reps=n, warmup=1)
    spec = for_run(table="cdr", column="msisdn")
    domains = resolve(algorithm.bundle.manifest.privacy.groups, dataset_domains(ds.path))
    with Runtime(tables={"cdr": ds.path}) as runtime:
        sandbox, sandboxed = measure(
            partial(runtime.run, source=algorithm.bundle.source, entrypoint=algorithm.bundle.manifest.entrypoint,
                    params=algorithm.params, pseudonyms=spec, read=algorithm.bundle.manifest.read_map(),
                    categorical=algorithm.bundle.manifest.categorical_map()),
            reps=n, warmup=1)
        # the per-run fixed cost: fork, namespaces, empty root, rlimits, seccomp, compile, one tiny result
        fixed, _ = measure(partial(runtime.run, source=_TRIVIAL, entrypoint="contributions", params={}),
                           reps=max(n, 20), warmup=2)
        result["layers"] = sorted(name for name, on in runtime.layers().items() if on)
        units = RunPseudonyms.of(spec, count=runtime.unit_count("msisdn"))
    result["fixed_cost"] = fixed.to_dict()
    clock.say(f"small runs: per-run fixed cost on a warm runtime {_fmt(result['fixed_cost'])} "
              f"(layers: {', '.join(result['layers'])})")
    gate, _ = measure(partial(release, sandboxed, privacy=algorithm.bundle.manifest.privacy, domains=domains,
                              policy=ReleasePolicy(), epsilon=1.0, known_units=units), reps=n)
    result["direct"] = direct.to_dict()
    result["sandbox"] = sandbox.to_dict()
    result["gate"] = gate.to_dict()

    deployment.register("cdr_small", ds.path)
    for concurrency in (1, 2):
        key = f"concurrency_{concurrency}"
        deployment.start_worker("cdr_small", concurrency=concurrency, sample_memory=False)
        try:
            # Each pool process starts its own sandbox zygote on its first run: warm them all.
            _, warm = deployment.burst(algorithm, "cdr_small", 2 * concurrency, timeout=600)
            if any(state != "released" for state in warm):
                raise RuntimeError(f"warm-up runs ended {sorted(set(warm))}; see the worker log")
            if concurrency == 1:
                sequential = [deployment.run(algorithm, "cdr_small") for _ in range(n)]
                bad = [t for t in sequential if t.state != "released"]
                if bad:
                    raise RuntimeError(f"a run ended {bad[0].state}: {bad[0].error}")
                result["end_to_end"] = Timing(samples=tuple(t.seconds for t in sequential)).to_dict()
                result["request"] = Timing(samples=tuple(t.request_seconds for t in sequential)).to_dict()
                eps = deployment.next_epsilon()
                first = deployment.run(algorithm, "cdr_small", epsilon=eps)
                cached = [deployment.run(algorithm, "cdr_small", epsilon=eps) for _ in range(max(3, n // 2))]
                result["cached_repeat"] = Timing(samples=tuple(t.seconds for t in cached)).to_dict()
                result["cached_served"] = sum(t.cached for t in cached)
                result["fresh_cached"] = first.cached
                clock.say(f"small runs: end to end {_fmt(result['end_to_end'])}, cached repeat "
                          f"{_fmt(result['cached_repeat'])}, pandas {_fmt(result['direct'])}")
            wall, states = deployment.burst(algorithm, "cdr_small", 2 * n)
            result[key] = {"runs": len(states), "seconds": wall, "runs_per_second": len(states) / wall,
                           "released": states.count("released")}
            clock.say(f"small runs: {len(states)} dispatched at once, worker --concurrency {concurrency}: "
                      f"{len(states) / wall:.1f} runs/s")
            if concurrency == 2:
                result["shell_loop"] = _shell_loop(deployment, algorithm, "cdr_small", 2 * n, server=False)
                result["shell_loop_server"] = _shell_loop(deployment, algorithm, "cdr_small", 2 * n, server=True)
                clock.say(f"small runs: {2 * n} x `opal run --no-wait` from a shell loop: "
                          f"{result['shell_loop']['runs_per_second']:.1f} runs/s, with `opal cli-server` "
                          f"{result['shell_loop_server']['runs_per_second']:.1f} runs/s")
        finally:
            deployment.stop_worker()
    return result


def _shell_loop(deployment: Any, algorithm: algos.Algorithm, dataset: str, count: int, *,
                server: bool) -> dict[str, Any]:
    """``count`` runs submitted as a user's script would: one ``opal run --no-wait``
    process each, from a bash loop (issue #17's 20 runs/s); then waited for, so
    none is left queued. ``server``: with this user's ``opal cli-server`` running
    (in a runtime folder of the benchmark's own), else with none."""
    import shlex
    import subprocess
    import tempfile

    opal_bin = Path(sys.executable).with_name("opal")
    command = shlex.quote(str(opal_bin)) if opal_bin.exists() else f"{shlex.quote(sys.executable)} -m opal"
    epsilons = " ".join(f"{deployment.next_epsilon():.6f}" for _ in range(count))
    script = (
        f"for e in {epsilons}; do {command} run {algorithm.name} --dataset {dataset} "
        f"--params {shlex.quote(json.dumps(algorithm.params))} --epsilon $e --key sam --no-wait || exit 1; done"
    )
    runtime = tempfile.mkdtemp(prefix="opal-bench-runtime-")
    env = {**deployment.env, "XDG_RUNTIME_DIR": runtime}
    if server:
        subprocess.run([sys.executable, "-m", "opal", "cli-server", "start"], env=env, check=True,
                       capture_output=True)
    try:
        t = time.perf_counter()
        proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
    finally:
        if server:
            subprocess.run([sys.executable, "-m", "opal", "cli-server", "stop"], env=env, capture_output=True)
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"opal run --no-wait failed: {proc.stderr.strip()[-300:]}")
    run_ids = proc.stdout.split()
    from opal.runs.dispatch import wait

    states = [wait(deployment.node, run_id, timeout=600).state for run_id in run_ids]
    return {"runs": len(run_ids), "seconds": wall, "runs_per_second": len(run_ids) / wall,
            "released": states.count("released")}


# -- the run ---------------------------------------------------------------------------------


def run(config: BenchConfig) -> dict[str, Any]:
    """Measure everything ``config`` asks for; return the results (JSON-safe)."""
    from benchmarks.endtoend import Deployment, choose_broker

    clock = Stopwatch()
    if os.environ.pop("OPAL_DB_URL", None):
        clock.say("note: OPAL_DB_URL is ignored here; the benchmark uses the default SQLite ledger")
    started = datetime.now(UTC)
    algorithms = algos.algorithms()
    results: dict[str, Any] = {
        "format": "opal-bench/1",
        "started": started.isoformat(timespec="seconds"),
        "config": {
            "sizes": list(config.sizes), "quick": config.quick, "seed": config.seed, "days": config.days,
            "reps": {size_label(s): config.reps(s) for s in config.sizes},
            "e2e_reps": {size_label(s): config.e2e_reps(s) for s in config.sizes},
            "sections": list(config.sections), "gate_rows": config.gate_rows,
            "ledger_entries": config.ledger_entries, "small_rows": config.small_rows, "small_runs": config.small_runs,
        },
        "machine": _machine(),
        "sql": {a.name: a.sql for a in algorithms},
        "datasets": [],
        "algorithms": {},
        "workers": {},
    }
    work = Path(tempfile.mkdtemp(prefix="opal-bench-"))
    clock.say(f"OPAL benchmark: sizes {', '.join(size_label(s) for s in config.sizes)}; "
              f"sections {', '.join(config.sections)}; scratch {work}")
    broker_url, embedded = None, None
    deployment = None
    try:
        if any(config.wants(s) for s in ("e2e", "small", "partitioned", "large")):
            broker_url, embedded = choose_broker(work)
            deployment = Deployment(root=work / "node", broker_url=broker_url)
            deployment.setup(algorithms)
            clock.say(f"broker {broker_url}; node {deployment.node.home.root} with 6 approved bundles")
        results["versions"] = _versions(broker_url)

        per_size = any(config.wants(s) for s in ("algorithms", "e2e", "partitioned"))
        for size in config.sizes if per_size else ():
            ds = ensure_dataset(config.data_dir, size, seed=config.seed, days=config.days, say=clock.say)
            entry = ds.to_dict()
            results["datasets"].append(entry)
            rows: list[dict[str, Any]] = []
            if config.wants("algorithms"):
                got = _attempt(clock, f"{ds.label} in-process algorithms",
                               partial(_in_process, config, ds, algorithms, clock))
                if isinstance(got, tuple):
                    rows, info = got
                    entry.update(info)
                else:
                    entry.update(got)
            if config.wants("e2e") and deployment is not None:
                worker = _attempt(clock, f"{ds.label} end to end",
                                  partial(_end_to_end, config, deployment, ds, algorithms, rows, clock))
                worker["in_memory_bytes"] = entry.get("in_memory_bytes")
                results["workers"][ds.label] = worker
            results["algorithms"][ds.label] = rows
            if config.wants("partitioned") and deployment is not None:
                from benchmarks.partitioned import bench_partitioned

                results.setdefault("partitioned", {})[ds.label] = _attempt(
                    clock, f"{ds.label} partitioned", partial(
                        bench_partitioned, deployment, ds.path, ds.label, algorithms,
                        reps=config.e2e_reps(ds.target_rows), work=work, clock=clock))

        if config.wants("large") and deployment is not None:
            from benchmarks.large import bench_large

            results["large"] = _attempt(clock, "large (100 M rows)", partial(
                bench_large, deployment, algorithms, data_dir=config.data_dir, seed=config.seed,
                days=config.days, quick=config.quick, clock=clock))

        if config.wants("gate"):
            from benchmarks.gate import bench_gate

            clock.say(f"release gate alone on {config.gate_rows:,} contribution rows vs DuckDB count(DISTINCT) ...")
            results["gate"] = _attempt(clock, "gate", lambda: bench_gate(
                rows=config.gate_rows, units=config.gate_units, groups=config.gate_groups,
                reps=2 if config.quick else 3))
            if "gate" in results["gate"]:
                clock.say(f"gate {_fmt(results['gate']['gate'])}, duckdb {_fmt(results['gate']['duckdb'])}")

        if config.wants("utility"):
            from benchmarks.utility import bench_utility

            clock.say("utility: population_density, 2 000 subscribers x 7 days, ε = 1 ...")
            results["utility"] = _attempt(clock, "utility", lambda: bench_utility(runs=10 if config.quick else 30))
            if "released_share_min" in results["utility"]:
                u = results["utility"]
                clock.say(f"utility: {u['released_share_mean']:.0%} of cells released "
                          f"(min {u['released_share_min']:.0%}), 95 % intervals hold the truth "
                          f"{u['interval_coverage']:.1%} of the time")

        if config.wants("ledger"):
            results["ledger"] = _ledger(config, work, clock)

        if config.wants("small") and deployment is not None:
            results["small"] = _attempt(clock, "small runs", lambda: _small_runs(config, deployment, algorithms, clock))
    finally:
        if deployment is not None:
            deployment.close()
        if embedded is not None:
            embedded.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["seconds"] = clock.elapsed()
    return results


def _ledger(config: BenchConfig, work: Path, clock: Stopwatch) -> dict[str, Any]:
    from benchmarks import ledger

    out: dict[str, Any] = {"appends": []}
    for processes in (1, 4):
        got = _attempt(clock, f"ledger appends ({processes} processes)",
                       partial(ledger.bench_appends, work, processes=processes, seconds=config.append_seconds,
                               appends=config.appends))
        out["appends"].append(got if "error" not in got else {"processes": processes, **got})
        if "per_second" in got:
            clock.say(f"ledger: {got['per_second']:.0f} durable appends/s with {processes} process(es)")
    built = _attempt(clock, "ledger build", lambda: ledger.ensure_ledger(config.data_dir, config.ledger_entries,
                                                                          say=clock.say))
    out["build"] = built
    if "home" in built:
        home = Path(built["home"])
        reps = 2 if config.quick else 1
        out["verify"] = _attempt(clock, "ledger verify", lambda: ledger.bench_verify(home, reps=reps))
        if "cli" in out["verify"]:
            clock.say(
                f"ledger: opal ledger verify on {out['verify']['entries']:,} entries {_fmt(out['verify']['cli'])}"
            )
        out["proofs"] = _attempt(clock, "inclusion proofs",
                                 lambda: ledger.bench_proofs(home, proofs=config.proofs, reps=3))
        if "proof" in out["proofs"]:
            clock.say(f"ledger: inclusion proof {_fmt(out['proofs']['proof'])} warm, "
                      f"opal ledger prove inclusion {_fmt(out['proofs']['cli'])}")
        out["report"] = _attempt(clock, "governance report", lambda: _report(config, reps))
        if "cli" in out["report"]:
            clock.say(f"ledger: opal report on {out['report']['entries']:,} entries of run lifecycles "
                      f"{_fmt(out['report']['cli'])} (bound 10 s at 100k), page {out['report']['page_bytes']:,} bytes")
        startup = _attempt(clock, "CLI start-up", lambda: ledger.cli_startup(home, reps=3))
        out["cli_startup"] = startup.to_dict() if isinstance(startup, Timing) else startup
        floor = _attempt(clock, "interpreter start-up", lambda: ledger.python_startup(reps=5))
        out["python_startup"] = floor.to_dict() if isinstance(floor, Timing) else floor
    return out


def _report(config: BenchConfig, reps: int) -> dict[str, Any]:
    from benchmarks import governance

    entries = min(config.ledger_entries, 100_000)  # the bound is stated for 100 000 entries
    home = governance.ensure_run_ledger(config.data_dir, entries, say=print)
    return governance.bench_report(home, reps=reps)


def main(argv: Sequence[str] | None = None) -> None:
    from benchmarks.report import render, write_report
    from opal.errors import OpalError

    try:
        config = BenchConfig.from_args(argv)
    except OpalError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    results = run(config)
    if config.json_path is not None:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        config.json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = render(results, previous=config.output)
    print()
    print(text)
    if config.output is not None:
        write_report(config.output, text)
        print(f"wrote {config.output}" + (f" and {config.json_path}" if config.json_path else ""))
