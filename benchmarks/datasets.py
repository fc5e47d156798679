"""Benchmark datasets: synthetic CDR Parquet files cached under ``bench-data/``,
keyed by size and seed, with how long they took to generate and the
generator's peak memory (kept next to the file, so a cached dataset still
reports them)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.config import child_env, size_label
from opal.errors import InternalError

__all__ = ["BenchDataset", "ensure_dataset", "load_frame", "subscribers_for", "synth_in_child"]

# opal.data.synth at 5 events per subscriber-day writes ~4.7 rows per
# subscriber-day once activity, weekends and Poisson counts are applied.
ROWS_PER_SUBSCRIBER_DAY = 4.69


def subscribers_for(rows: int, days: int) -> int:
    return max(1, round(rows / (days * ROWS_PER_SUBSCRIBER_DAY)))


@dataclass(frozen=True, kw_only=True)
class BenchDataset:
    label: str
    target_rows: int
    path: Path
    rows: int
    subscribers: int
    days: int
    seed: int
    file_bytes: int
    generation_seconds: float
    generation_peak_bytes: int | None
    cached: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def ensure_dataset(
    data_dir: Path, rows: int, *, seed: int, days: int, say: Callable[[str], None] = print
) -> BenchDataset:
    """The dataset of ``rows`` target rows: from the cache, or generated now
    (in a child process, so its peak memory is measured alone)."""
    subscribers = subscribers_for(rows, days)
    label = size_label(rows)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"cdr-{label}-seed{seed}-days{days}-subs{subscribers}.parquet"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") == path.stat().st_size:
            say(f"dataset {label}: cached {path.name} ({meta['rows']:,} rows)")
            _ensure_domains(path, days)
            return _dataset(label, rows, path, meta, cached=True)
    say(f"dataset {label}: generating {subscribers:,} subscribers x {days} days (seed {seed}) ...")
    t0 = time.perf_counter()
    meta = synth_in_child(path, subscribers=subscribers, days=days, seed=seed, what=f"the {label} benchmark dataset")
    say(f"dataset {label}: {meta['rows']:,} rows in {time.perf_counter() - t0:.1f}s, "
        f"{meta['bytes'] / 1e6:.0f} MB Parquet")
    return _dataset(label, rows, path, meta, cached=False)


def synth_in_child(path: Path, *, subscribers: int, days: int, seed: int, what: str,
                   parts: int | None = None, key: str | None = None) -> dict[str, Any]:
    """Run ``benchmarks._synth_child`` (a partitioned directory with ``parts`` and
    ``key``); write its figures next to ``path`` (``PATH.json`` for a directory,
    the same stem otherwise) and return them.

    Raises:
        InternalError: the generator failed (its last line of output named).
    """
    extra = [str(parts), str(key)] if parts is not None else []
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks._synth_child", str(path), str(subscribers), str(days), str(seed), *extra],
        env=child_env(), capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise InternalError(f"generating {what} failed: {tail}")
    meta: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    meta_path = path.with_name(path.name + ".json") if parts is not None else path.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _ensure_domains(path: Path, days: int) -> None:
    """A dataset cached before synth wrote public domains gets its sidecar now."""
    from opal.data.world import public_domains, write_domains
    from opal.release.domains import sidecar_for

    if not sidecar_for(path).exists():
        write_domains(sidecar_for(path), public_domains(days=days))


def _dataset(label: str, rows: int, path: Path, meta: dict[str, Any], *, cached: bool) -> BenchDataset:
    return BenchDataset(
        label=label,
        target_rows=rows,
        path=path,
        rows=int(meta["rows"]),
        subscribers=int(meta["subscribers"]),
        days=int(meta["days"]),
        seed=int(meta["seed"]),
        file_bytes=int(meta["bytes"]),
        generation_seconds=float(meta["seconds"]),
        generation_peak_bytes=meta.get("peak_bytes"),
        cached=cached,
    )


def load_frame(path: Path) -> tuple[pd.DataFrame, float, int]:
    """The dataset as a pandas DataFrame (what a user would analyse), the
    seconds it took to read, and its in-memory size in bytes."""
    t0 = time.perf_counter()
    frame = pd.read_parquet(path)
    seconds = time.perf_counter() - t0
    return frame, seconds, int(frame.memory_usage(deep=True).sum())
