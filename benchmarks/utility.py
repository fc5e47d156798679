"""Utility of the release on small data (issue #14): ``population_density`` on
2 000 subscribers x 7 days at ε = 1, through the real sandbox (per-run
pseudonyms) and the worker's gate, against the exact counts.

Reports the share of region x day cells released per run and how often the
stated 95 % interval holds the true count (over every released cell of every
run). With data-derived keys the partition-selection threshold (704 at
m = 30, ε = 1) released none of these cells.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

__all__ = ["bench_utility"]


def bench_utility(*, subscribers: int = 2_000, days: int = 7, epsilon: float = 1.0, runs: int = 30,
                  seed: int = 1) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from benchmarks.config import REPO
    from opal.bundle.registry import Bundle
    from opal.data.catalog import default_policy
    from opal.data.synth import synthesize
    from opal.release import release
    from opal.release.domains import load_domains, resolve
    from opal.sandbox import Runtime
    from opal.sandbox.pseudonyms import run_pseudonymised

    bundle = Bundle.from_folder(REPO / "algorithms" / "population_density")
    params = {"start_day": 0, "end_day": days - 1}
    policy = default_policy()
    with tempfile.TemporaryDirectory(prefix="opal-utility-") as tmp:
        data = Path(tmp) / "cdr.parquet"
        summary = synthesize(data, subscribers=subscribers, days=days, seed=seed)
        assert summary.domains_path is not None
        domains = resolve(bundle.manifest.privacy.groups, load_domains(summary.domains_path))
        cdr = pd.read_parquet(data, columns=["msisdn", "region", "day"])
        truth = cdr.groupby(["region", "day"]).msisdn.nunique()
        shares, covered, intervals, widths = [], 0, 0, []
        with Runtime(tables={"cdr": data}) as runtime:
            for _ in range(runs):
                contributions, units = run_pseudonymised(
                    runtime, table="cdr", column="msisdn", source=bundle.source,
                    entrypoint=bundle.manifest.entrypoint, params=params,
                )
                r = release(contributions, privacy=bundle.manifest.privacy, domains=domains, policy=policy,
                            epsilon=epsilon, known_units=units)
                table = r.table.set_index(["region", "day"])
                released = table[~table["suppressed"]]
                true = truth.reindex(released.index, fill_value=0).to_numpy()
                low = released["ci_low"].to_numpy(dtype=float)
                high = released["ci_high"].to_numpy(dtype=float)
                shares.append(len(released) / len(table))
                covered += int(((low <= true) & (true <= high)).sum())
                intervals += len(released)
                widths.extend((high - low).tolist())
    return {
        "subscribers": subscribers,
        "days": days,
        "epsilon": epsilon,
        "runs": runs,
        "cells": int(len(truth)),
        "min_true_count": int(truth.min()),
        "released_share_min": float(min(shares)),
        "released_share_mean": float(np.mean(shares)),
        "interval_coverage": covered / intervals if intervals else None,
        "interval_width_median": float(np.median(widths)) if widths else None,
        "stated_confidence": 0.95,
    }
