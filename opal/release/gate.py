"""The release gate: the only way data leaves a run.

``release()`` takes the per-unit contributions an algorithm returned and
produces the table that may leave, following the issue #5 recipe:

1. refuse an epsilon that is not positive or is over the per-run cap;
2. check and bound the contributions (``bounding.bounded_aggregate``);
3. noise every cell's distinct-unit count (discrete Laplace, OpenDP) and keep
   a cell only if the noisy count reaches the threshold
   (``max(min_units_per_cell, threshold the policy delta needs)``);
4. for sum/mean, drop cells failing the ACRO dominance rules, then noise the
   sums of the kept cells (Laplace or Gaussian, OpenDP);
5. refuse an output over ``max_cells``;
6. post-process (non-negative integer counts, rounded sums/means clamped to
   what the bounds allow), which cannot weaken the guarantee.

Every cell gets a ``CellDecision``. A suppressed cell's group key is never
recorded (the key itself can be private, e.g. a per-subscriber column), and
suppressed decisions are listed after the released ones, by reason, so their
position says nothing about their key.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opal.errors import LimitExceeded, ReleaseRefused
from opal.release.bounding import BoundedAggregate, bounded_aggregate, sensitivity
from opal.release.contributions import output_column
from opal.release.dominance import nk_fails, p_percent_fails
from opal.release.noise import (
    CountPlan,
    SumPlan,
    noisy_threshold_counts,
    noisy_values,
    plan_count,
    plan_sum,
)
from opal.release.policy import PrivacySpec, ReleasePolicy

__all__ = ["CellDecision", "Release", "release"]

REASON_RELEASED = "released"


@dataclass(frozen=True, kw_only=True)
class CellDecision:
    """What happened to one cell. ``group`` is set for released cells only."""

    released: bool
    reason: str
    group: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"released": self.released, "reason": self.reason, "group": self.group}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellDecision:
        return cls(
            released=bool(data["released"]),
            reason=str(data["reason"]),
            group=dict(data["group"]) if data.get("group") is not None else None,
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class Release:
    """A released table and the record of how it was made.

    ``table`` holds the group columns and one of ``count`` / ``sum`` / ``mean``,
    released cells only, sorted by the group columns. ``mechanism`` states the
    guarantee (mechanisms, scales, sensitivities, epsilon split, threshold)
    and holds no data.

    ``cells_suppressed`` and the suppressed decisions are exact, un-noised
    facts about the contributions (how many distinct groups they had): keep
    them on the operator's side. ``analyst_view()`` is what may leave.
    """

    table: pd.DataFrame
    decisions: tuple[CellDecision, ...]
    epsilon: float
    mechanism: dict[str, Any]
    cells_released: int
    cells_suppressed: int
    delta: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the whole release (trusted side)."""
        return {
            "table": table_to_dict(self.table),
            "decisions": [d.to_dict() for d in self.decisions],
            "epsilon": self.epsilon,
            "delta": self.delta,
            "mechanism": self.mechanism,
            "cells_released": self.cells_released,
            "cells_suppressed": self.cells_suppressed,
        }

    def analyst_view(self) -> dict[str, Any]:
        """What may leave to the analyst: ``to_dict()`` without the suppressed
        count and the suppressed decisions, which give the exact (un-noised)
        number of distinct groups in the contributions."""
        view = self.to_dict()
        del view["cells_suppressed"]
        view["decisions"] = [d for d in view["decisions"] if d["released"]]
        return view

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Release:
        decisions = tuple(CellDecision.from_dict(d) for d in data.get("decisions", ()))
        return cls(
            table=table_from_dict(data["table"]),
            decisions=decisions,
            epsilon=float(data["epsilon"]),
            delta=float(data.get("delta", 0.0)),
            mechanism=dict(data["mechanism"]),
            cells_released=int(data["cells_released"]),
            cells_suppressed=int(data.get("cells_suppressed", 0)),
        )


def table_to_dict(table: pd.DataFrame) -> dict[str, Any]:
    columns = [str(c) for c in table.columns]
    rows = [[_jsonable(v) for v in row] for row in table.itertuples(index=False, name=None)]
    return {"columns": columns, "rows": rows}


def table_from_dict(data: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([list(r) for r in data["rows"]], columns=list(data["columns"]))


def release(
    contributions: pd.DataFrame,
    *,
    privacy: PrivacySpec,
    policy: ReleasePolicy,
    epsilon: float,
    known_units: pd.Series | np.ndarray | None = None,
) -> Release:
    """Bound, aggregate, noise and check ``contributions``; return what may leave.

    ``known_units`` is the dataset's own privacy-unit column: every unit in the
    contributions must be one of them. ``None`` skips that check (the
    ``mechanism`` then says ``units_verified: false``).

    Raises:
        ReleaseRefused: epsilon not positive or over the per-run cap; the
            contributions break the declared schema.
        LimitExceeded: more released cells than ``policy.max_cells``.
    """
    eps = _check_epsilon(epsilon, policy)
    kind = privacy.aggregation
    sens = sensitivity(privacy)

    # Epsilon split: counts alone take all of it; sum/mean give half to the
    # noisy distinct-unit counts (threshold, and the mean's denominator) and
    # half to the noisy sums. Delta pays for key selection, and with gaussian
    # half of it goes to the Gaussian mechanism.
    gaussian = kind != "count" and policy.sum_mechanism == "gaussian"
    eps_count = eps if kind == "count" else eps / 2.0
    eps_value = 0.0 if kind == "count" else eps / 2.0
    delta_select = policy.delta / 2.0 if gaussian else policy.delta
    count_plan = plan_count(
        epsilon=eps_count,
        cells=sens.cells,
        min_units=policy.min_units_per_cell,
        delta=delta_select,
    )
    value_plan = None
    if kind != "count":
        centered = kind == "mean"
        l1 = sens.centered_l1 if centered else sens.sum_l1
        l2 = sens.centered_l2 if centered else sens.sum_l2
        assert l1 is not None and l2 is not None
        value_plan = plan_sum(
            mechanism=policy.sum_mechanism,
            epsilon=eps_value,
            delta=policy.delta / 2.0 if gaussian else 0.0,
            l1=l1,
            l2=l2,
        )

    agg = bounded_aggregate(
        contributions, privacy, known_units=known_units, top_n=policy.dominance_n
    )
    kept, noisy_units = noisy_threshold_counts(agg.units, count_plan)
    below = agg.cells - len(kept)

    suppressed: dict[str, int] = {}
    if below:
        suppressed[f"noisy unit count below the release threshold of {count_plan.threshold}"] = (
            below
        )

    if kind != "count":
        kept, noisy_units = _apply_dominance(agg, kept, noisy_units, policy, suppressed)

    if not policy.release_zero_cells:
        # The threshold is >= 1, so no zero cell reaches here; kept as the rule.
        zero = noisy_units <= 0
        if zero.any():
            suppressed["zero cell (release_zero_cells = false)"] = int(zero.sum())
            kept, noisy_units = kept[~zero], noisy_units[~zero]

    if len(kept) > policy.max_cells:
        raise LimitExceeded(
            f"release has {len(kept)} cells, more than the policy limit max_cells = "
            f"{policy.max_cells}; group by fewer or coarser columns, or ask the operator "
            "to raise max_cells"
        )

    values = _released_values(agg, kept, noisy_units, privacy, policy, value_plan)
    table = agg.keys.iloc[kept].reset_index(drop=True)
    group_cols = list(table.columns)
    for name, column in values.items():
        table[name] = column
    table = _sorted(table, group_cols)

    decisions = [
        CellDecision(
            released=True,
            reason=REASON_RELEASED,
            group={c: _jsonable(v) for c, v in zip(group_cols, row, strict=True)},
        )
        for row in table[group_cols].itertuples(index=False, name=None)
    ]
    for reason, n in suppressed.items():
        decisions.extend([CellDecision(released=False, reason=reason)] * n)

    delta_total = count_plan.delta + (value_plan.delta if value_plan is not None else 0.0)
    mechanism = _describe(
        privacy=privacy,
        policy=policy,
        eps=eps,
        eps_count=eps_count,
        eps_value=eps_value,
        count_plan=count_plan,
        value_plan=value_plan,
        sens=sens.to_dict(),
        delta_total=delta_total,
        units_verified=agg.units_verified,
    )
    return Release(
        table=table,
        decisions=tuple(decisions),
        epsilon=eps,
        delta=delta_total,
        mechanism=mechanism,
        cells_released=len(table),
        cells_suppressed=agg.cells - len(table),
    )


def _check_epsilon(epsilon: object, policy: ReleasePolicy) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.integer, np.floating)):
        raise ReleaseRefused(
            f"epsilon must be a positive number, found {type(epsilon).__name__}; "
            "pass e.g. --epsilon 0.5"
        )
    eps = float(epsilon)
    if not (math.isfinite(eps) and eps > 0):
        raise ReleaseRefused(
            f"epsilon must be a positive finite number, found {eps!r}; pass e.g. --epsilon 0.5"
        )
    if eps > policy.max_epsilon_per_run:
        raise ReleaseRefused(
            f"epsilon {eps:g} is over the per-run cap max_epsilon_per_run = "
            f"{policy.max_epsilon_per_run:g}; ask for at most {policy.max_epsilon_per_run:g}"
        )
    return eps


def _apply_dominance(
    agg: BoundedAggregate,
    kept: np.ndarray,
    noisy_units: np.ndarray,
    policy: ReleasePolicy,
    suppressed: dict[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    assert agg.top is not None and agg.abs_totals is not None
    top, totals = agg.top[kept], agg.abs_totals[kept]
    nk = nk_fails(top, totals, n=policy.dominance_n, k=policy.dominance_k)
    pp = p_percent_fails(top, totals, agg.units[kept], p=policy.dominance_p)
    nk_reason = (
        f"dominance: n-k rule (top {policy.dominance_n} contributors hold more than "
        f"{policy.dominance_k:g} of the cell total)"
    )
    p_reason = (
        f"dominance: p% rule (the rest of the cell is less than {policy.dominance_p:g} "
        "of its largest contributor)"
    )
    for mask, reason in (
        (nk & ~pp, nk_reason),
        (pp & ~nk, p_reason),
        (nk & pp, f"{nk_reason}; {p_reason}"),
    ):
        if mask.any():
            suppressed[reason] = int(mask.sum())
    ok = ~(nk | pp)
    return kept[ok], noisy_units[ok]


def _released_values(
    agg: BoundedAggregate,
    kept: np.ndarray,
    noisy_units: np.ndarray,
    privacy: PrivacySpec,
    policy: ReleasePolicy,
    value_plan: SumPlan | None,
) -> dict[str, np.ndarray]:
    """The released value columns. ``count`` → count; ``sum`` → sum; ``mean`` →
    mean and total, the total being post-processing of the same two noisy
    measurements (noisy centered sum + mid × noisy unit count): no extra ε."""
    out = output_column(privacy)
    if privacy.aggregation == "count":
        counts: np.ndarray = np.maximum(noisy_units, 0).astype(np.int64)
        return {out: counts}
    assert agg.sums is not None and privacy.value_bounds is not None and value_plan is not None
    lo, hi = float(privacy.value_bounds[0]), float(privacy.value_bounds[1])
    sums = agg.sums[kept]
    if privacy.aggregation == "sum":
        noisy = noisy_values(sums, value_plan)
        # Post-processing: a sum of values in [lo, hi] has the sign they force.
        if lo >= 0:
            noisy = np.maximum(noisy, 0.0)
        if hi <= 0:
            noisy = np.minimum(noisy, 0.0)
        rounded: np.ndarray = np.round(noisy, policy.value_decimals)
        return {out: rounded}
    mid = (lo + hi) / 2.0
    centered = sums - mid * agg.units[kept]
    noisy_centered = noisy_values(centered, value_plan)
    units = np.maximum(noisy_units, 1)
    mean = mid + noisy_centered / units
    clamped: np.ndarray = np.round(np.clip(mean, lo, hi), policy.value_decimals)
    # the total lies in [lo, hi] × units; clipping to that is post-processing too
    total = np.clip(noisy_centered + mid * units, lo * units, hi * units)
    return {out: clamped, "total": np.round(total, policy.value_decimals)}


def _sorted(table: pd.DataFrame, group_cols: list[str]) -> pd.DataFrame:
    if not group_cols or len(table) < 2:
        return table.reset_index(drop=True)
    try:
        out = table.sort_values(group_cols, kind="stable")
    except TypeError:  # mixed types in a column: order by their text
        out = table.sort_values(group_cols, kind="stable", key=lambda s: s.astype(str))
    return out.reset_index(drop=True)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (pd.Timestamp, _dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, pd.Timedelta):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _describe(
    *,
    privacy: PrivacySpec,
    policy: ReleasePolicy,
    eps: float,
    eps_count: float,
    eps_value: float,
    count_plan: CountPlan,
    value_plan: SumPlan | None,
    sens: dict[str, Any],
    delta_total: float,
    units_verified: bool,
) -> dict[str, Any]:
    split: dict[str, float] = {"count": eps_count}
    if privacy.aggregation != "count":
        split[privacy.aggregation] = eps_value
    desc: dict[str, Any] = {
        "name": f"opal-gate/{privacy.aggregation}",
        "aggregation": privacy.aggregation,
        "unit": privacy.unit,
        "neighbouring": "add or remove all rows of one privacy unit",
        "max_groups_per_unit": privacy.max_groups_per_unit,
        "value_bounds": list(privacy.value_bounds) if privacy.value_bounds else None,
        "contribution_selection": "uniform random per unit, OS-seeded",
        "sensitivity": sens,
        "epsilon": eps,
        "delta": delta_total,
        "epsilon_split": split,
        "composition": "basic (epsilons and deltas add)",
        "count": count_plan.describe(),
        "threshold": count_plan.threshold,
        "min_units_per_cell": policy.min_units_per_cell,
        "release_zero_cells": policy.release_zero_cells,
        "noise_source": "OpenDP (operating-system randomness)",
        "units_verified": units_verified,
    }
    if value_plan is not None:
        desc[privacy.aggregation] = value_plan.describe()
        if privacy.aggregation == "mean":
            desc["mean"]["estimator"] = (
                "mid + noisy sum of (value - mid) / noisy unit count, clamped to value_bounds"
            )
        desc["dominance"] = {
            "n": policy.dominance_n,
            "k": policy.dominance_k,
            "p": policy.dominance_p,
            "applies_to": "true per-unit contributions (ACRO rules, not differentially private)",
        }
        desc["value_decimals"] = policy.value_decimals
    return desc
