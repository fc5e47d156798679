"""The release gate alone on a large contributions table vs DuckDB
``count(DISTINCT unit) GROUP BY group`` over the same in-memory table.

The table comes from the release team's own benchmark
(``benchmarks.release_gate``) when it is there, so both benchmarks measure the
same shape of data; otherwise an equivalent one is built here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.timing import Timing

__all__ = ["bench_gate", "contributions_table"]


def _own_table(rows: int, units: int, groups: int, seed: int = 7) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)  # synthetic bench data only, never noise
    ids = 100_000_000 + rng.choice(900_000_000, units, replace=False).astype(np.int64)
    frame = pd.DataFrame(
        {"msisdn": ids[rng.integers(0, units, rows)], "cell": rng.integers(0, groups, rows, dtype=np.int64)}
    )
    return frame, pd.Series(ids)


def contributions_table(rows: int, units: int, groups: int) -> tuple[pd.DataFrame, pd.Series, str]:
    """``(contributions [msisdn, cell], known units, where the table came from)``."""
    try:
        from benchmarks.release_gate import _table
    except ImportError:
        frame, known = _own_table(rows, units, groups)
        return frame, known, "benchmarks.gate (benchmarks.release_gate not available)"
    frame, known = _table(rows, units, groups)
    return frame[["msisdn", "cell"]], known, "benchmarks.release_gate._table"


def _interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, Timing]:
    """Run the contenders in turn, so they share the machine's load alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: Timing(samples=tuple(s)) for name, s in samples.items()}


def bench_gate(*, rows: int, units: int, groups: int, reps: int) -> dict[str, Any]:
    import duckdb

    from opal.release import release
    from opal.release.domains import GroupDomain
    from opal.release.policy import PrivacySpec, ReleasePolicy

    t0 = time.perf_counter()
    frame, known, source = contributions_table(rows, units, groups)
    built = time.perf_counter() - t0
    con = duckdb.connect()
    con.register("contributions", frame)
    sql = "SELECT cell, count(DISTINCT msisdn) AS units FROM contributions GROUP BY cell"
    domains = {"cell": tuple(range(groups))}
    spec = PrivacySpec(
        unit="msisdn", aggregation="count", max_groups_per_unit=30,
        groups={"cell": GroupDomain(values=domains["cell"])},
    )
    policy = ReleasePolicy()
    timings = _interleaved(
        {
            "gate": lambda: release(frame, privacy=spec, domains=domains, policy=policy, epsilon=1.0,
                                    known_units=known),
            "duckdb": lambda: con.execute(sql).fetchnumpy(),
        },
        reps,
    )
    con.close()
    return {
        "rows": len(frame),
        "units": units,
        "groups": groups,
        "max_groups_per_unit": spec.max_groups_per_unit,
        "table_source": source,
        "table_build_seconds": built,
        "gate": timings["gate"].to_dict(),
        "duckdb": timings["duckdb"].to_dict(),
    }
