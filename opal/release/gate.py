"""The release gate: the only way data leaves a run.

``release()`` takes the per-unit contributions an algorithm returned and
produces the table that may leave:

1. refuse an epsilon that is not positive or is outside the policy's per-run
   range, and a domain product over ``max_cells`` (both decided without data);
2. check and bound the contributions (``bounding.bounded_aggregate``): rows
   whose labels fall outside the public domains are dropped, each unit keeps
   at most ``max_groups_per_unit`` cells, values are clamped;
3. noise the distinct-unit count of *every* cell of the domain product
   (discrete Laplace, OpenDP); for sum/mean, noise every cell's sum too;
4. mark a cell suppressed when its noisy count is below
   ``min_units_per_cell`` (a rule on a noisy quantity: post-processing);
5. post-process (non-negative integer counts, rounded sums/means clamped to
   what the bounds allow) and attach each released value's noise scale and
   95 % interval.

The released table has one row per cell of the domain, whatever the data:
its rows and labels are public, its values are noisy. What the gate dropped
(and why) is exact, so it stays in ``diagnostics``, the operator's only.

Outside ``strict`` mode the gate is total: a malformed contributions table
becomes no contributions, and the release is made over the domain anyway
(DESIGN "Total runs"). ``strict`` (``opal algo test``, on the caller's own
data) refuses instead, with the reason.

No rule here decides on exact values: the ACRO n-k / p% dominance rules are
not differentially private (whether a cell is released would tell whether
one unit is in the data) and are kept in ``dominance.py`` for a future
non-DP output lane only (docs/release.md).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from opal.errors import ReleaseRefused
from opal.release.bounding import (
    DROP_MALFORMED,
    BoundedAggregate,
    bounded_aggregate,
    empty_aggregate,
    sensitivity,
)
from opal.release.contributions import UnitSet, domain_keys, output_column
from opal.release.domains import Label, cell_count, check_cells
from opal.release.noise import (
    CountPlan,
    SumPlan,
    noisy_counts,
    noisy_values,
    plan_count,
    plan_sum,
)
from opal.release.policy import PrivacySpec, ReleasePolicy

__all__ = [
    "CONFIDENCE",
    "CellDecision",
    "Release",
    "domain_cells",
    "partial_aggregate",
    "release",
    "release_aggregate",
]

REASON_RELEASED = "released"
CONFIDENCE = 0.95
SUPPRESSED = "suppressed"
NOISE_SCALE = "noise_scale"
CI_LOW = "ci_low"
CI_HIGH = "ci_high"


@dataclass(frozen=True, kw_only=True)
class CellDecision:
    """What happened to one cell of the domain (its labels are public)."""

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

    ``table`` holds one row per cell of the domain product, sorted by the
    group columns: the labels, the released value (``count`` / ``sum`` /
    ``mean`` and ``total``; empty where suppressed), ``suppressed``, and the
    value's ``noise_scale`` and 95 % interval ``ci_low``..``ci_high``.
    ``mechanism`` states the guarantee and holds no data.

    ``diagnostics`` (rows dropped and why, units seen, a refused layout) are
    exact facts about the contributions: the operator's only.
    ``analyst_view()`` is what may leave.
    """

    table: pd.DataFrame
    decisions: tuple[CellDecision, ...]
    epsilon: float
    mechanism: dict[str, Any]
    cells_released: int
    cells_suppressed: int
    delta: float = 0.0
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the whole release (trusted side)."""
        return dict(self.analyst_view(), diagnostics=self.diagnostics)

    def analyst_view(self) -> dict[str, Any]:
        """What may leave to the analyst: everything but ``diagnostics``."""
        return {
            "table": table_to_dict(self.table),
            "decisions": [d.to_dict() for d in self.decisions],
            "epsilon": self.epsilon,
            "delta": self.delta,
            "mechanism": self.mechanism,
            "cells_released": self.cells_released,
            "cells_suppressed": self.cells_suppressed,
        }

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
            diagnostics=dict(data.get("diagnostics") or {}),
        )


def table_to_dict(table: pd.DataFrame) -> dict[str, Any]:
    columns = [str(c) for c in table.columns]
    values = [_json_column(table.iloc[:, i]) for i in range(table.shape[1])]
    rows = [list(row) for row in zip(*values, strict=True)] if values else [[] for _ in range(len(table))]
    return {"columns": columns, "rows": rows}


def _json_column(column: pd.Series) -> list[Any]:
    """``[_jsonable(v) for v in column]``, a column at a time where its dtype
    allows: numbers, booleans and text become Python values in one call, and
    only their missing or non-finite entries are looked at one by one."""
    dtype = column.dtype
    kind = getattr(dtype, "kind", "O")
    if kind not in "iubf" and not isinstance(dtype, pd.StringDtype):
        return [_jsonable(v) for v in column.tolist()]
    values: list[Any] = column.tolist()
    bad = column.isna().to_numpy(dtype=bool)
    if kind == "f":
        bad = bad | ~np.isfinite(column.to_numpy(dtype="float64", na_value=np.nan))
    for i in np.flatnonzero(bad).tolist():
        values[i] = None
    return values


def table_from_dict(data: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([list(r) for r in data["rows"]], columns=list(data["columns"]))


def release(
    contributions: pd.DataFrame | None,
    *,
    privacy: PrivacySpec,
    domains: Mapping[str, tuple[Label, ...]],
    policy: ReleasePolicy,
    epsilon: float,
    known_units: UnitSet | object | None = None,
    strict: bool = False,
) -> Release:
    """Bound, aggregate and noise ``contributions`` over the domain product.

    ``domains`` gives each group column of ``privacy`` its public labels
    (``opal.release.domains.resolve``). ``known_units`` is the set of units the
    run may name (the run's pseudonyms, or explicit ids); ``None`` skips that
    check (the ``mechanism`` then says ``units_verified: false``).
    ``contributions=None`` releases over no contributions.

    The two halves are public so a partitioned run can use them apart:
    ``partial_aggregate`` per partition, ``release_aggregate`` once over
    their sum (``bounding.combine``).

    Raises:
        ReleaseRefused: epsilon outside the policy's range; the domain product
            over ``max_cells``; a group column without a domain; and, with
            ``strict`` only, contributions that break the declared layout.
    """
    policy.check_epsilon(epsilon)
    check_cells(domain_cells(privacy, domains), policy.max_cells)
    agg = partial_aggregate(contributions, privacy=privacy, domains=domains, known_units=known_units, strict=strict)
    return release_aggregate(agg, privacy=privacy, domains=domains, policy=policy, epsilon=epsilon)


def domain_cells(privacy: PrivacySpec, domains: Mapping[str, tuple[Label, ...]]) -> int:
    """Cells of the domain product of ``privacy``'s groups.

    Raises:
        ReleaseRefused: a group column without a domain.
    """
    missing = [g for g in privacy.groups if g not in domains]
    if missing:
        raise ReleaseRefused(
            f"group column(s) {', '.join(map(repr, missing))} have no public domain; "
            "declare them in [privacy.groups]"
        )
    return cell_count({g: domains[g] for g in privacy.groups})


def partial_aggregate(
    contributions: pd.DataFrame | None,
    *,
    privacy: PrivacySpec,
    domains: Mapping[str, tuple[Label, ...]],
    known_units: UnitSet | object | None = None,
    strict: bool = False,
) -> BoundedAggregate:
    """The first half of the gate: check and bound ``contributions`` and
    aggregate them over every cell (exact, no noise; trusted side only).

    Outside ``strict`` a malformed table is no contributions; its reason is
    in the aggregate's ``refused``. Aggregates of disjoint sets of units add
    up (``bounding.combine``): that is what makes a partitioned run exact.

    Raises:
        ReleaseRefused: a group column without a domain; with ``strict``,
            contributions that break the declared layout or rules.
    """
    cells = domain_cells(privacy, domains)
    verified = known_units is not None
    if contributions is None:
        return empty_aggregate(privacy, cells, units_verified=verified)
    try:
        return bounded_aggregate(
            contributions, privacy, domains, known_units=known_units, strict=strict  # type: ignore[arg-type]
        )
    except ReleaseRefused as exc:
        if strict:
            raise
        rows = len(contributions) if isinstance(contributions, pd.DataFrame) else 0
        dropped = {DROP_MALFORMED: rows} if rows else {}
        return empty_aggregate(
            privacy, cells, rows_in=rows, dropped=dropped, refused=exc.message, units_verified=verified
        )


def release_aggregate(
    agg: BoundedAggregate,
    *,
    privacy: PrivacySpec,
    domains: Mapping[str, tuple[Label, ...]],
    policy: ReleasePolicy,
    epsilon: float,
) -> Release:
    """The second half of the gate: noise every cell of ``agg`` once, mark
    suppressed cells, attach intervals (the only place noise is drawn).

    Raises:
        ReleaseRefused: epsilon outside the policy's range; the domain product
            over ``max_cells``; a group column without a domain.
    """
    eps = policy.check_epsilon(epsilon)
    groups = tuple(privacy.groups)
    cells = domain_cells(privacy, domains)
    check_cells(cells, policy.max_cells)
    if agg.cells != cells:
        raise ReleaseRefused(f"the aggregate has {agg.cells} cells, the domain product {cells}")
    kind = privacy.aggregation
    sens = sensitivity(privacy)

    # Epsilon split: counts alone take all of it; sum/mean give half to the
    # noisy distinct-unit counts (suppression, and the mean's denominator)
    # and half to the noisy sums. Only the Gaussian mechanism needs a delta.
    gaussian = kind != "count" and policy.sum_mechanism == "gaussian"
    eps_count = eps if kind == "count" else eps / 2.0
    eps_value = 0.0 if kind == "count" else eps / 2.0
    count_plan = plan_count(epsilon=eps_count, cells=sens.cells)
    value_plan = None
    if kind != "count":
        centered = kind == "mean"
        l1 = sens.centered_l1 if centered else sens.sum_l1
        l2 = sens.centered_l2 if centered else sens.sum_l2
        assert l1 is not None and l2 is not None
        value_plan = plan_sum(
            mechanism=policy.sum_mechanism,
            epsilon=eps_value,
            delta=policy.delta if gaussian else 0.0,
            l1=l1,
            l2=l2,
        )

    noisy_units = noisy_counts(agg.units, count_plan)
    suppressed = noisy_units < policy.min_units_per_cell
    if not policy.release_zero_cells:
        suppressed |= noisy_units <= 0
    reason = (
        f"noisy unit count below min_units_per_cell = {policy.min_units_per_cell}"
        if policy.min_units_per_cell > 0
        else "noisy unit count not positive (release_zero_cells = false)"
    )

    table = domain_keys(groups, domains)
    for name, column in _released_values(
        agg, noisy_units, suppressed, privacy, policy, count_plan, value_plan
    ).items():
        table[name] = column
    table = _sorted(table, list(groups))

    released_mask = ~table[SUPPRESSED].to_numpy(dtype=bool)
    labels = [_json_column(table[c]) for c in groups]
    decisions = tuple(
        CellDecision(
            released=ok,
            reason=REASON_RELEASED if ok else reason,
            group=dict(zip(groups, row, strict=True)),
        )
        for ok, row in zip(
            released_mask.tolist(), zip(*labels, strict=True) if labels else ((),) * len(table), strict=True
        )
    )
    delta_total = value_plan.delta if value_plan is not None else 0.0
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
        cells=cells,
        units_verified=agg.units_verified,
    )
    diagnostics: dict[str, Any] = {
        "rows_in": agg.rows_in,
        "rows_dropped": dict(agg.dropped),
        "units_in": agg.units_in,
    }
    if agg.refused is not None:
        diagnostics["contributions_refused"] = agg.refused
    n_released = int(released_mask.sum())
    return Release(
        table=table,
        decisions=decisions,
        epsilon=eps,
        delta=delta_total,
        mechanism=mechanism,
        cells_released=n_released,
        cells_suppressed=cells - n_released,
        diagnostics=diagnostics,
    )


def _released_values(
    agg: BoundedAggregate,
    noisy_units: np.ndarray,
    suppressed: np.ndarray,
    privacy: PrivacySpec,
    policy: ReleasePolicy,
    count_plan: CountPlan,
    value_plan: SumPlan | None,
) -> dict[str, Any]:
    """The released columns, every one post-processing of the noisy
    measurements. ``count`` → count; ``sum`` → sum; ``mean`` → mean and total
    (noisy centered sum + mid × noisy unit count: no extra ε). Each value
    comes with its noise scale and a 95 % interval:

    * count: ± the discrete Laplace half-width (P(|noise| > k) <= 5 %);
    * sum: ± the Laplace / Gaussian half-width;
    * mean: the range of mid + S/N over the 97.5 % intervals of the noisy
      centered sum S and the noisy count N (union bound: >= 95 %), the whole
      value range when N's interval reaches 0. Its ``noise_scale`` is the
      sum's scale over the noisy count (approximate).
    """
    out = output_column(privacy)
    n = len(noisy_units)
    cols: dict[str, Any] = {}
    if privacy.aggregation == "count":
        k = count_plan.half_width(CONFIDENCE)
        value = np.maximum(noisy_units, 0)
        low = np.maximum(noisy_units - k, 0)
        high = np.maximum(noisy_units + k, 0)
        scale = np.full(n, count_plan.scale)
        cols[out] = _masked(value, suppressed, integer=True)
        cols[SUPPRESSED] = suppressed.astype(bool)
        cols[NOISE_SCALE] = np.round(scale, 6)
        cols[CI_LOW] = _masked(low, suppressed, integer=True)
        cols[CI_HIGH] = _masked(high, suppressed, integer=True)
        return cols
    else:
        assert agg.sums is not None and privacy.value_bounds is not None and value_plan is not None
        lo, hi = float(privacy.value_bounds[0]), float(privacy.value_bounds[1])
        if privacy.aggregation == "sum":
            noisy = noisy_values(agg.sums, value_plan)
            t = value_plan.half_width(CONFIDENCE)
            floor = 0.0 if lo >= 0 else -math.inf  # a sum of values in [lo, hi] has their sign
            ceil = 0.0 if hi <= 0 else math.inf
            value = np.clip(noisy, floor, ceil)
            low, high = np.clip(noisy - t, floor, ceil), np.clip(noisy + t, floor, ceil)
            scale = np.full(n, value_plan.scale)
            cols[out] = _masked(np.round(value, policy.value_decimals), suppressed)
        else:
            mid = (lo + hi) / 2.0
            noisy_centered = noisy_values(agg.sums - mid * agg.units, value_plan)
            units = np.maximum(noisy_units, 1)
            mean = np.clip(mid + noisy_centered / units, lo, hi)
            total = np.clip(noisy_centered + mid * units, lo * units, hi * units)
            t = value_plan.half_width(1.0 - (1.0 - CONFIDENCE) / 2.0)
            k = count_plan.half_width(1.0 - (1.0 - CONFIDENCE) / 2.0)
            n_lo = (noisy_units - k).astype(np.float64)
            n_hi = (noisy_units + k).astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                corners = np.stack(
                    [mid + s / d for s in (noisy_centered - t, noisy_centered + t) for d in (n_lo, n_hi)]
                )
            defined = n_lo >= 1
            low = np.where(defined, np.clip(corners.min(axis=0), lo, hi), lo)
            high = np.where(defined, np.clip(corners.max(axis=0), lo, hi), hi)
            scale = value_plan.scale / units
            cols[out] = _masked(np.round(mean, policy.value_decimals), suppressed)
            cols["total"] = _masked(np.round(total, policy.value_decimals), suppressed)
    cols[SUPPRESSED] = suppressed.astype(bool)
    cols[NOISE_SCALE] = np.round(scale, 6)
    cols[CI_LOW] = _masked(np.round(low, policy.value_decimals), suppressed)
    cols[CI_HIGH] = _masked(np.round(high, policy.value_decimals), suppressed)
    return cols


def _masked(values: np.ndarray, suppressed: np.ndarray, *, integer: bool = False) -> Any:
    """``values`` with suppressed cells empty (pandas nullable dtype)."""
    series = pd.Series(values, dtype="Int64" if integer else "Float64")
    series[suppressed] = pd.NA
    return series


def _sorted(table: pd.DataFrame, group_cols: list[str]) -> pd.DataFrame:
    if not group_cols or len(table) < 2:
        return table.reset_index(drop=True)
    try:
        out = table.sort_values(group_cols, kind="stable")
    except TypeError:  # mixed types in a column: order by their text
        out = table.sort_values(group_cols, kind="stable", key=lambda s: s.astype(str))
    return out.reset_index(drop=True)


def _jsonable(v: Any) -> Any:
    if v is pd.NA or v is None:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (pd.Timestamp, _dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, pd.Timedelta):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bool, int, float, str)):
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
    cells: int,
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
        "groups": "public domains: one row per cell of their product",
        "cells": cells,
        "contribution_selection": "uniform random per unit, OS-seeded",
        "sensitivity": sens,
        "epsilon": eps,
        "delta": delta_total,
        "epsilon_split": split,
        "composition": "basic (epsilons and deltas add)",
        "count": count_plan.describe(),
        "suppression": (
            f"noisy unit count below min_units_per_cell = {policy.min_units_per_cell} "
            "(post-processing of the noisy count)"
        ),
        "min_units_per_cell": policy.min_units_per_cell,
        "release_zero_cells": policy.release_zero_cells,
        "interval": f"{CONFIDENCE:.0%} interval of each released value (ci_low, ci_high)",
        "noise_source": "OpenDP (operating-system randomness)",
        "units_verified": units_verified,
    }
    if value_plan is not None:
        desc[privacy.aggregation] = value_plan.describe()
        if privacy.aggregation == "mean":
            desc["mean"]["estimator"] = (
                "mid + noisy sum of (value - mid) / noisy unit count, clamped to value_bounds"
            )
            desc["mean"]["interval"] = (
                "range of the estimator over the 97.5 % intervals of both noisy terms "
                "(>= 95 % by the union bound)"
            )
        desc["value_decimals"] = policy.value_decimals
    return desc
