"""Partitioned vs one-file runs, end to end (the ``partitioned`` section).

For one dataset size: the cached Parquet file is partitioned (``opal
dataset partition``, ``BENCH_PARTS`` parts, default 8) and both are
registered; then, alternately per repetition, every reference algorithm runs
end to end through a worker of two pool processes on the file and on the
partitions (each worker alone on the machine, its process tree's memory
sampled), and DuckDB (all cores) and pandas (one core, data in memory) compute
the same contributions on the same file. A last worker serves the partitions
with ``--memory`` set to hold about one partition per pool process, to show
the resident memory following the partition, not the dataset.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import algorithms as algos
from benchmarks.timing import Stopwatch, Timing

__all__ = ["bench_partitioned", "parts_for", "serve"]


def parts_for() -> int:
    return int(os.environ.get("BENCH_PARTS", "8"))


def serve(deployment: Any, dataset: str, algorithms: list[algos.Algorithm], reps: int, *,
           memory: str | None, clock: Stopwatch, label: str) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Start a worker of two pool processes on ``dataset``; one untimed run,
    then one untimed run of every algorithm while the tree's memory is
    sampled, then ``reps`` timed runs of every algorithm; stop it. Seconds per
    algorithm, and the first run's wait and the worker tree's memory peaks.

    The timed runs go unsampled: one sample of a 100 M-row tree reads five
    processes' ``smaps_rollup`` (~22 ms of CPU, under the kernel's lock on
    their memory maps), which every 50 ms made the runs ~20 % slower
    (docs/scale.md); DuckDB, timed beside them, was never sampled."""
    samples: dict[str, list[float]] = {a.name: [] for a in algorithms}
    t0 = time.perf_counter()
    deployment.start_worker(dataset, concurrency=2, memory=memory)
    memory_info: dict[str, Any] | None = None
    try:
        first = deployment.run(algorithms[0], dataset, timeout=1800)
        if first.state != "released":
            raise RuntimeError(f"warm-up run ended {first.state}: {first.error}")
        warm = time.perf_counter() - t0
        clock.say(f"{label}: worker up, first run released after {warm:.1f}s")
        for algorithm in algorithms:
            timing = deployment.run(algorithm, dataset)
            if timing.state != "released":
                raise RuntimeError(f"{algorithm.name} ended {timing.state}: {timing.error}")
        memory_info = deployment.stop_sampling()
        for _ in range(reps):
            for algorithm in algorithms:
                timing = deployment.run(algorithm, dataset)
                if timing.state != "released":
                    raise RuntimeError(f"{algorithm.name} ended {timing.state}: {timing.error}")
                samples[algorithm.name].append(timing.seconds)
    finally:
        stopped = deployment.stop_worker()
        memory_info = memory_info or stopped
    return samples, {"first_run_seconds": warm, "memory": memory_info}


def bench_partitioned(deployment: Any, path: Path, label: str, algorithms: list[algos.Algorithm], *,
                      reps: int, work: Path, clock: Stopwatch) -> dict[str, Any]:
    """Timings (seconds per algorithm) of the file and the partitions, DuckDB and pandas; memory peaks."""
    import pyarrow.parquet as pq

    from benchmarks.datasets import load_frame
    from opal.data.partition import node_key, partition

    parts = parts_for()
    folder = work / f"parts-{label}"
    t0 = time.perf_counter()
    parted = partition(path, folder, parts=parts, key=node_key(deployment.node.home), unit="msisdn")
    split_seconds = time.perf_counter() - t0
    sidecar = path.with_suffix(".domains.toml")
    if sidecar.exists():
        (folder.parent / f"{folder.name}.domains.toml").write_bytes(sidecar.read_bytes())
    clock.say(f"{label}: partitioned into {parts} parts in {split_seconds:.1f}s")
    whole, split = f"pw_{label.lower()}", f"pp_{label.lower()}"
    deployment.register(whole, path)
    deployment.register(split, folder)

    out: dict[str, Any] = {
        "parts": parts,
        "rows": sum(parted.rows),
        "largest_part_rows": max(parted.rows),
        "partition_seconds": split_seconds,
        "file_bytes": path.stat().st_size,
        "largest_part_bytes": max(f.stat().st_size for f in parted.files),
    }
    one_file, out["one_file_worker"] = serve(deployment, whole, algorithms, reps, memory=None, clock=clock,
                                              label=f"{label} one file")
    partitioned, out["partitioned_worker"] = serve(deployment, split, algorithms, reps, memory=None, clock=clock,
                                                    label=f"{label} {parts} partitions")
    # about one partition resident per pool process: memory follows the partition
    from opal.sandbox import Limits
    from opal.worker.state import partition_estimate

    largest = parted.files[parted.rows.index(max(parted.rows))]
    budget = f"{2 * partition_estimate(largest, Limits()) // (1 << 20) + 1}M"
    bounded, out["bounded_worker"] = serve(deployment, split, algorithms[:1], 1, memory=budget, clock=clock,
                                            label=f"{label} {parts} partitions, --memory {budget}")
    out["bounded_memory_flag"] = budget
    out["bounded_seconds"] = Timing(samples=tuple(bounded[algorithms[0].name])).to_dict()

    con = algos.duckdb_connect(path)
    duck: dict[str, list[float]] = {a.name: [] for a in algorithms}
    for _ in range(reps):
        for algorithm in algorithms:
            t = time.perf_counter()
            algos.run_sql(con, algorithm)
            duck[algorithm.name].append(time.perf_counter() - t)
    con.close()
    frame, _, _ = load_frame(path)
    pandas: dict[str, list[float]] = {a.name: [] for a in algorithms}
    views = {a.name: a.view(frame) for a in algorithms}  # as the sandbox shows each its columns
    for _ in range(reps):
        for algorithm in algorithms:
            t = time.perf_counter()
            algorithm.direct(views[algorithm.name])
            pandas[algorithm.name].append(time.perf_counter() - t)
    del frame
    gc.collect()

    rows = []
    for algorithm in algorithms:
        rows.append({
            "name": algorithm.name,
            "one_file": Timing(samples=tuple(one_file[algorithm.name])).to_dict(),
            "partitioned": Timing(samples=tuple(partitioned[algorithm.name])).to_dict(),
            "duckdb": Timing(samples=tuple(duck[algorithm.name])).to_dict(),
            "pandas": Timing(samples=tuple(pandas[algorithm.name])).to_dict(),
        })
    out["algorithms"] = rows
    out["row_groups_per_part"] = pq.ParquetFile(parted.files[0]).metadata.num_row_groups
    return out
