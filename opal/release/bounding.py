"""Contribution bounding and the pre-noise aggregate.

This is where the privacy guarantee becomes the platform's rather than the
algorithm's: whatever the algorithm returned, after this step every privacy
unit is in at most ``max_groups_per_unit`` cells, at most once per cell, with
a value clamped to ``value_bounds``. Sensitivities are derived from those two
declared bounds, never from the data.

``bounded_aggregate`` is a pure function of its inputs (plus the selection
randomness) so tests can check the bound directly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opal.errors import ReleaseRefused
from opal.release.contributions import (
    UnitSet,
    check_finite_values,
    check_layout,
    domain_codes,
    unit_keys,
    unit_membership,
    unknown_units_error,
)
from opal.release.domains import Label
from opal.release.policy import PrivacySpec

__all__ = [
    "BoundedAggregate",
    "Sensitivity",
    "bounded_aggregate",
    "combine",
    "empty_aggregate",
    "os_rng",
    "sensitivity",
]


@dataclass(frozen=True, kw_only=True)
class Sensitivity:
    """How much one privacy unit can move the pre-noise aggregate.

    ``cells`` is the most cells a unit can touch (l0), ``count_linf`` the most
    it changes one cell's distinct-unit count; ``sum_*`` bound the change of the
    sums (``None`` for count); ``centered_*`` bound the sums of values shifted by
    the middle of the bounds, which the mean uses.
    """

    cells: int
    count_linf: int
    count_l1: int
    sum_linf: float | None
    sum_l1: float | None
    sum_l2: float | None
    centered_linf: float | None
    centered_l1: float | None
    centered_l2: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "cells": self.cells,
            "count_linf": self.count_linf,
            "count_l1": self.count_l1,
            "sum_linf": self.sum_linf,
            "sum_l1": self.sum_l1,
            "sum_l2": self.sum_l2,
            "centered_linf": self.centered_linf,
            "centered_l1": self.centered_l1,
            "centered_l2": self.centered_l2,
        }


def sensitivity(privacy: PrivacySpec) -> Sensitivity:
    """Sensitivities under add/remove-one-unit, from the declared bounds only."""
    m = privacy.max_groups_per_unit
    if privacy.value_bounds is None or privacy.aggregation == "count":
        return Sensitivity(
            cells=m,
            count_linf=1,
            count_l1=m,
            sum_linf=None,
            sum_l1=None,
            sum_l2=None,
            centered_linf=None,
            centered_l1=None,
            centered_l2=None,
        )
    lo, hi = (float(b) for b in privacy.value_bounds)
    c = max(abs(lo), abs(hi))
    half = (hi - lo) / 2.0
    return Sensitivity(
        cells=m,
        count_linf=1,
        count_l1=m,
        sum_linf=c,
        sum_l1=m * c,
        sum_l2=math.sqrt(m) * c,
        centered_linf=half,
        centered_l1=m * half,
        centered_l2=math.sqrt(m) * half,
    )


@dataclass(frozen=True, kw_only=True)
class BoundedAggregate:
    """The true, pre-noise aggregate of bounded contributions over every cell
    of the public domain product (cell order of ``domain_keys``).

    Trusted-side only: these are exact values and must never leave the gate.
    ``dropped`` counts the rows set aside before aggregation, by reason; it is
    exact too, so it is the operator's only.
    """

    units: np.ndarray  # int64 distinct units per cell
    sums: np.ndarray | None  # float64 sum of clamped per-unit contributions
    rows_in: int
    units_in: int
    dropped: dict[str, int]
    units_verified: bool
    refused: str | None = None  # why the whole table was set aside (malformed), if it was

    @property
    def cells(self) -> int:
        return len(self.units)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (exact values: for the operator's own store only)."""
        return {
            "units": self.units.tolist(),
            "sums": None if self.sums is None else self.sums.tolist(),
            "rows_in": self.rows_in,
            "units_in": self.units_in,
            "dropped": dict(self.dropped),
            "units_verified": self.units_verified,
            "refused": self.refused,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoundedAggregate:
        return cls(
            units=np.asarray(data["units"], dtype=np.int64),
            sums=None if data["sums"] is None else np.asarray(data["sums"], dtype=np.float64),
            rows_in=int(data["rows_in"]),
            units_in=int(data["units_in"]),
            dropped={str(k): int(v) for k, v in data["dropped"].items()},
            units_verified=bool(data["units_verified"]),
            refused=None if data.get("refused") is None else str(data["refused"]),
        )


def combine(parts: Sequence[BoundedAggregate]) -> BoundedAggregate:
    """The aggregate of the union of disjoint sets of units: cell by cell sums.

    Exact when no unit is in two parts (a dataset partitioned by unit), since
    each part bounded its own units. Raises ``ValueError`` on no parts or on
    parts over different domains.
    """
    if not parts:
        raise ValueError("combine needs at least one partial aggregate")
    cells = {p.cells for p in parts}
    kinds = {p.sums is None for p in parts}
    if len(cells) != 1 or len(kinds) != 1:
        raise ValueError("partial aggregates over different domains or aggregations cannot be combined")
    dropped: dict[str, int] = {}
    for p in parts:
        for reason, n in p.dropped.items():
            _note(dropped, reason, n)
    refused = [p.refused for p in parts if p.refused is not None]
    units = np.zeros(parts[0].cells, dtype=np.int64)
    sums = None if parts[0].sums is None else np.zeros(parts[0].cells, dtype=np.float64)
    for p in parts:
        units += p.units
        if sums is not None and p.sums is not None:
            sums += p.sums
    return BoundedAggregate(
        units=units,
        sums=sums,
        rows_in=sum(p.rows_in for p in parts),
        units_in=sum(p.units_in for p in parts),
        dropped=dropped,
        units_verified=all(p.units_verified for p in parts),
        refused=refused[0] if refused else None,
    )


def os_rng() -> np.random.Generator:
    """A numpy Generator seeded from the OS, for the per-unit group selection only.

    Noise never comes from numpy: it is drawn by OpenDP.
    """
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))


DROP_LABEL = "group label missing or outside the public domain"
DROP_UNIT_MISSING = "privacy unit missing"
DROP_UNIT_UNKNOWN = "privacy unit not one of this run's pseudonyms"
DROP_VALUE = "value not finite"
DROP_MALFORMED = "contributions table malformed"


def empty_aggregate(
    privacy: PrivacySpec,
    cells: int,
    *,
    rows_in: int = 0,
    dropped: dict[str, int] | None = None,
    refused: str | None = None,
    units_verified: bool = True,
) -> BoundedAggregate:
    """The aggregate of no contributions: what a run whose algorithm produced
    nothing usable releases (with noise, like any other)."""
    return BoundedAggregate(
        units=np.zeros(cells, dtype=np.int64),
        sums=None if privacy.aggregation == "count" else np.zeros(cells, dtype=np.float64),
        rows_in=rows_in,
        units_in=0,
        dropped=dict(dropped or {}),
        units_verified=units_verified,
        refused=refused,
    )


def bounded_aggregate(
    contributions: pd.DataFrame,
    privacy: PrivacySpec,
    domains: Mapping[str, tuple[Label, ...]],
    *,
    known_units: UnitSet | None = None,
    strict: bool = False,
    rng: np.random.Generator | None = None,
) -> BoundedAggregate:
    """Check, bound and aggregate contributions over the domain product (no noise).

    1. check the layout against ``privacy`` (unit, declared groups, value);
    2. drop rows whose labels are missing or outside the public domains, whose
       unit is missing or not one of ``known_units``, or whose value is not
       finite (``strict``: refuse those instead, except labels);
    3. collapse duplicate (unit, cell) rows: a unit counts once per cell, and
       its values there are added (each row clamped, then the total clamped);
    4. keep at most ``max_groups_per_unit`` cells per unit, chosen uniformly
       at random (``rng``, OS-seeded by default);
    5. per cell of the domain: distinct units and sum of contributions.

    Raises ``ReleaseRefused`` for a malformed table (always) and, with
    ``strict``, for a row that breaks a rule other than the domain.
    """
    layout = check_layout(contributions, privacy)
    frame = contributions
    rows_in = len(frame)
    dropped: dict[str, int] = {}
    cells = domain_codes(frame, layout.groups, domains)
    width = max(1, int(np.prod([len(domains[g]) for g in layout.groups], dtype=np.int64)))
    keep = cells >= 0
    _note(dropped, DROP_LABEL, int((~keep).sum()))

    unit_col = frame[layout.unit]
    missing = unit_col.isna().to_numpy()
    if missing.any():
        if strict:
            raise ReleaseRefused(
                f"privacy-unit column {layout.unit!r} holds missing values; "
                "every contribution needs a unit"
            )
        _note(dropped, DROP_UNIT_MISSING, int((missing & keep).sum()))
        keep &= ~missing

    values: np.ndarray | None = None
    if layout.value is not None:
        values = frame[layout.value].to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        if not finite.all():
            if strict:
                check_finite_values(values, layout.value)
            _note(dropped, DROP_VALUE, int((~finite & keep).sum()))
            keep &= finite

    if not keep.all():
        unit_col = unit_col[keep]
        cells = cells[keep]
        if values is not None:
            values = values[keep]
    try:
        units = unit_keys(unit_col, max_span=(2**62) // width)
    except ReleaseRefused:
        if strict:
            raise
        _note(dropped, DROP_MALFORMED, len(unit_col))
        return empty_aggregate(privacy, width, rows_in=rows_in, dropped=dropped)

    # Distinct (unit, cell) pairs by sorting one int64 key: sorting beats
    # hashing ten million distinct pairs, and leaves each unit's pairs adjacent.
    key = units.keys * width + cells
    pair_sum: np.ndarray | None = None
    if values is None:
        key.sort()
        sorted_key = key
    else:
        order = np.argsort(key)
        sorted_key = key[order]
        lo, hi = _bounds(privacy)
        clipped = np.clip(values, lo, hi)[order]
    first = _run_starts(sorted_key)
    pairs = sorted_key[first]
    if values is not None:
        pair_sum = np.add.reduceat(clipped, np.flatnonzero(first)) if len(pairs) else clipped[:0]
        np.clip(pair_sum, lo, hi, out=pair_sum)
    del key, sorted_key, first

    pair_unit = pairs // width
    pair_cell = pairs - pair_unit * width
    unit_first = _run_starts(pair_unit)
    if known_units is not None and len(pair_unit):
        known = unit_membership(units.values_of(pair_unit[unit_first]), known_units)
        if not known.all():
            if strict:
                raise unknown_units_error(layout.unit)
            known_pair = known[np.cumsum(unit_first) - 1]
            _note(dropped, DROP_UNIT_UNKNOWN, int((~known_pair).sum()))
            pair_unit, pair_cell = pair_unit[known_pair], pair_cell[known_pair]
            if pair_sum is not None:
                pair_sum = pair_sum[known_pair]
            unit_first = _run_starts(pair_unit)
    dense_unit = np.cumsum(unit_first) - 1
    n_units = int(dense_unit[-1]) + 1 if len(dense_unit) else 0

    selected = _select_per_unit(dense_unit, n_units, privacy.max_groups_per_unit, rng)
    if selected is not None:
        pair_cell = pair_cell[selected]
        if pair_sum is not None:
            pair_sum = pair_sum[selected]

    per_cell = np.bincount(pair_cell, minlength=width).astype(np.int64)
    sums = None
    if pair_sum is not None:
        sums = np.bincount(pair_cell, weights=pair_sum, minlength=width).astype(np.float64)
    return BoundedAggregate(
        units=per_cell,
        sums=sums,
        rows_in=rows_in,
        units_in=n_units,
        dropped=dropped,
        units_verified=known_units is not None,
    )


def _note(dropped: dict[str, int], reason: str, n: int) -> None:
    if n:
        dropped[reason] = dropped.get(reason, 0) + n


def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Boolean mask of the first element of each run of equal values."""
    starts = np.empty(len(sorted_values), dtype=bool)
    if len(sorted_values):
        starts[0] = True
        np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts[1:])
    return starts


def _bounds(privacy: PrivacySpec) -> tuple[float, float]:
    assert privacy.value_bounds is not None
    return float(privacy.value_bounds[0]), float(privacy.value_bounds[1])


def _select_per_unit(
    pair_unit: np.ndarray, n_units: int, m: int, rng: np.random.Generator | None
) -> np.ndarray | None:
    """Mask of the (unit, cell) pairs kept: at most ``m`` per unit, a uniformly
    random subset of that unit's cells. ``pair_unit`` holds dense unit indices
    in non-decreasing order. ``None`` when no unit is over the bound."""
    per_unit = np.bincount(pair_unit, minlength=n_units)
    over = per_unit > m
    if not over.any():
        return None
    rng = rng if rng is not None else os_rng()
    idx = np.flatnonzero(over[pair_unit])
    units = pair_unit[idx]
    # Sort by (unit, random): unit in the high bits, random bits below. Units
    # stay in place (they are already sorted), so a pair's rank in its unit is
    # its position minus where the unit's run starts. Ties among random bits
    # only bias which cells are chosen, never the bound itself.
    rand_bits = 62 - max(int(n_units).bit_length(), 1)
    key = units << rand_bits
    if rand_bits > 0:
        key |= (rng.bit_generator.random_raw(len(idx)) >> np.uint64(64 - rand_bits)).astype(
            np.int64
        )
    order = np.argsort(key)
    in_idx = np.where(over, per_unit, 0)
    run_start = np.cumsum(in_idx) - in_idx  # where each unit starts in idx
    rank = np.arange(len(idx), dtype=np.int64) - run_start[units]
    keep = np.ones(len(pair_unit), dtype=bool)
    keep[idx[order[rank >= m]]] = False
    return keep
