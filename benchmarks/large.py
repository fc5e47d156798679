"""The 100 M-row section (``large``): issue #18's targets, measured.

Run with ``BENCH_FULL=1 make bench`` (or ``python -m benchmarks --only
large``). Nothing here holds a whole dataset in one frame:

* **Data.** 10 M and 100 M rows are synthesized straight into
  ``BENCH_LARGE_PARTS`` (default 32) partitions (``opal dataset synth
  --parts``), in a process of their own whose peak memory is reported, and
  cached under ``bench-data/``. They are bucketed with a fixed benchmark
  key, so the cache survives the benchmark's throw-away node (a directory
  may come from another node: registration checks that no unit is in two
  partitions).
* **DuckDB** runs each algorithm's SQL over the same partition files (all
  cores, reading the files at each query).
* **OPAL** runs each algorithm end to end through one worker of two pool
  processes, with ``--memory`` set to hold about one partition per pool
  process: the configuration of the memory target, and at 100 M the only
  one that fits (every partition resident would need more than this
  machine's memory). A task whose partition is not resident reloads its
  pool process's zygote with it (``Runtime.reload``).
* **Targets** (issue #18): OPAL / DuckDB at most 1.5 at 100 M for every
  algorithm; t(100 M) / t(10 M) at most 11 in the same configuration; the
  worker tree's peak RSS at 100 M at most 2 GB plus twice the largest
  resident partition (its in-memory size, Arrow's count).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import algorithms as algos
from benchmarks.config import size_label
from benchmarks.datasets import subscribers_for, synth_in_child
from benchmarks.partitioned import serve
from benchmarks.timing import Stopwatch, Timing

__all__ = ["BENCH_PARTITION_KEY", "LARGE_SIZES", "bench_large", "ensure_partitioned", "large_parts"]

# 16 ASCII characters (SipHash's key); fixed so a cached directory stays valid.
BENCH_PARTITION_KEY = "opal-bench-parts"
LARGE_SIZES = (10_000_000, 100_000_000)
RATIO_TARGET = 1.5
GROWTH_TARGET = 11.0
RSS_BASE_BYTES = 2 * 10**9


def large_parts() -> int:
    return int(os.environ.get("BENCH_LARGE_PARTS", "32"))


def ensure_partitioned(data_dir: Path, rows: int, *, parts: int, seed: int, days: int,
                       say: Any = print) -> tuple[Path, dict[str, Any]]:
    """The partitioned dataset of ``rows`` target rows: cached, or synthesized now
    partition by partition in a child process (its peak memory measured alone)."""
    subscribers = subscribers_for(rows, days)
    label = size_label(rows)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"cdr-{label}-seed{seed}-days{days}-subs{subscribers}-parts{parts}"
    meta_path = path.with_name(path.name + ".json")
    if path.is_dir() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") == sum(f.stat().st_size for f in path.rglob("*.parquet")):
            say(f"dataset {label} in {parts} parts: cached {path.name} ({meta['rows']:,} rows)")
            return path, {**meta, "cached": True}
    if path.exists():
        import shutil

        shutil.rmtree(path)
    say(f"dataset {label}: synthesizing {subscribers:,} subscribers x {days} days into {parts} partitions ...")
    meta = synth_in_child(path, subscribers=subscribers, days=days, seed=seed, parts=parts,
                          key=BENCH_PARTITION_KEY, what=f"the {label} partitioned benchmark dataset")
    say(f"dataset {label}: {meta['rows']:,} rows in {parts} partitions in {meta['seconds']:.1f}s, "
        f"generator peak {meta['peak_bytes'] / 1e6:.0f} MB")
    return path, {**meta, "cached": False}


def _largest_in_memory(files: tuple[Path, ...], rows: tuple[int, ...]) -> int:
    """Arrow's in-memory size of the partition with the most rows."""
    import pyarrow.parquet as pq

    table = pq.read_table(files[rows.index(max(rows))])
    nbytes = int(table.nbytes)
    del table
    return nbytes


def _one_size(deployment: Any, rows: int, algorithms: list[algos.Algorithm], *, data_dir: Path, parts: int,
              seed: int, days: int, reps: int, clock: Stopwatch) -> dict[str, Any]:
    from opal.data.partition import read_partitioned
    from opal.sandbox import Limits
    from opal.worker.state import partition_estimate

    label = size_label(rows)
    path, meta = ensure_partitioned(data_dir, rows, parts=parts, seed=seed, days=days, say=clock.say)
    parted = read_partitioned(path)
    largest = parted.files[parted.rows.index(max(parted.rows))]
    out: dict[str, Any] = {
        "label": label, "parts": parts, "rows": sum(parted.rows), "largest_part_rows": max(parted.rows),
        "largest_part_file_bytes": largest.stat().st_size,
        "largest_part_memory_bytes": _largest_in_memory(parted.files, parted.rows),
        "parquet_bytes": meta["bytes"], "generation_seconds": meta["seconds"],
        "generation_peak_bytes": meta.get("peak_bytes"), "generation_cached": meta["cached"],
    }
    name = f"large_{label.lower()}"
    t0 = time.perf_counter()
    deployment.register(name, path)
    out["register_seconds"] = time.perf_counter() - t0
    clock.say(f"{label}: registered in {out['register_seconds']:.1f}s")

    budget = f"{2 * partition_estimate(largest, Limits()) // (1 << 20) + 1}M"
    out["memory_flag"] = budget
    # an untimed first run, then every algorithm reps times (the first also waits for the first zygotes)
    samples, served = serve(deployment, name, algorithms, reps, memory=budget, clock=clock, label=label)
    out["first_release_seconds"] = served["first_run_seconds"]
    out["worker"] = served["memory"]

    con = algos.duckdb_connect(path)
    duck: dict[str, list[float]] = {a.name: [] for a in algorithms}
    for _ in range(max(reps, 2)):
        for algorithm in algorithms:
            t = time.perf_counter()
            algos.run_sql(con, algorithm)
            duck[algorithm.name].append(time.perf_counter() - t)
    con.close()
    out["algorithms"] = [
        {"name": a.name, "opal": Timing(samples=tuple(samples[a.name])).to_dict(),
         "duckdb": Timing(samples=tuple(duck[a.name])).to_dict()}
        for a in algorithms
    ]
    return out


def bench_large(deployment: Any, algorithms: list[algos.Algorithm], *, data_dir: Path, seed: int, days: int,
                quick: bool, clock: Stopwatch) -> dict[str, Any]:
    """Both sizes, then the three targets read off them."""
    parts = large_parts()
    sizes = (20_000, 200_000) if quick else LARGE_SIZES
    out: dict[str, Any] = {"parts": parts, "sizes": {}}
    for rows in sizes:
        out["sizes"][size_label(rows)] = _one_size(
            deployment, rows, algorithms, data_dir=data_dir, parts=parts, seed=seed, days=days,
            reps=1 if quick else 2, clock=clock)  # one repetition at 100 M swung by ±15 % between runs
    small, big = (out["sizes"][size_label(r)] for r in sizes)
    out["small_label"], out["big_label"] = small["label"], big["label"]
    targets = []
    for s, b in zip(small["algorithms"], big["algorithms"], strict=True):
        ratio = b["opal"]["median"] / b["duckdb"]["median"]
        growth = b["opal"]["median"] / s["opal"]["median"]
        targets.append({"name": b["name"], "ratio": ratio, "growth": growth,
                        "ratio_met": ratio <= RATIO_TARGET, "growth_met": growth <= GROWTH_TARGET})
    worker = big.get("worker") or {}
    bound = RSS_BASE_BYTES + 2 * big["largest_part_memory_bytes"]
    out["targets"] = {
        "algorithms": targets,
        "rss_peak_bytes": worker.get("tree_rss_peak_bytes"),
        "pss_peak_bytes": worker.get("tree_pss_peak_bytes"),
        "rss_bound_bytes": bound,
        "rss_met": (worker.get("tree_rss_peak_bytes") or 0) <= bound,
    }
    return out
