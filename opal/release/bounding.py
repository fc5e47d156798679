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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from opal.release.contributions import (
    cell_codes,
    check_finite_values,
    check_known_units,
    check_layout,
    unit_keys,
)
from opal.release.policy import PrivacySpec

__all__ = ["BoundedAggregate", "Sensitivity", "bounded_aggregate", "os_rng", "sensitivity"]


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
    """The true, pre-noise aggregate of bounded contributions, one row per cell.

    Only cells that keep at least one unit after bounding exist here: a cell
    reached only by a contribution the bound dropped must not surface at all.

    Trusted-side only: these are exact values and must never leave the gate.
    """

    keys: pd.DataFrame  # group columns, one row per cell (cell order)
    units: np.ndarray  # int64 distinct units per cell
    sums: np.ndarray | None  # float64 sum of clamped per-unit contributions
    top: np.ndarray | None  # float64 (cells, n) largest |contribution|, descending
    abs_totals: np.ndarray | None  # float64 sum of |contribution| per cell
    rows_in: int
    units_in: int
    units_verified: bool

    @property
    def cells(self) -> int:
        return len(self.units)


def os_rng() -> np.random.Generator:
    """A numpy Generator seeded from the OS, for the per-unit group selection only.

    Noise never comes from numpy: it is drawn by OpenDP.
    """
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))


def bounded_aggregate(
    contributions: pd.DataFrame,
    privacy: PrivacySpec,
    *,
    known_units: object | None = None,
    top_n: int = 2,
    rng: np.random.Generator | None = None,
) -> BoundedAggregate:
    """Check, bound and aggregate contributions (no noise).

    1. check the layout against ``privacy`` (unit, groups, value);
    2. refuse missing or unknown units, missing groups, non-finite values;
    3. collapse duplicate (unit, group) rows: a unit counts once per cell, and
       its values there are added (each row clamped, then the total clamped);
    4. keep at most ``max_groups_per_unit`` cells per unit, chosen uniformly
       at random (``rng``, OS-seeded by default);
    5. per cell: distinct units, sum of contributions, and the ``top_n``
       largest contribution magnitudes (for the dominance rules).

    Raises ``ReleaseRefused`` (via ``check_layout`` and friends).
    """
    layout = check_layout(contributions, privacy)
    frame = contributions
    cells = cell_codes(frame, layout.groups)
    width = cells.size
    units = unit_keys(frame[layout.unit], max_span=(2**62) // width)

    values: np.ndarray | None = None
    if layout.value is not None:
        values = frame[layout.value].to_numpy(dtype=np.float64, na_value=np.nan)
        check_finite_values(values, layout.value)

    # Distinct (unit, cell) pairs by sorting one int64 key: sorting beats
    # hashing ten million distinct pairs, and leaves each unit's pairs adjacent.
    key = units.keys * width + cells.codes
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
    if known_units is not None:
        check_known_units(units.values_of(pair_unit[unit_first]), known_units, layout.unit)
    dense_unit = np.cumsum(unit_first) - 1
    n_units = int(dense_unit[-1]) + 1 if len(dense_unit) else 0

    keep = _select_per_unit(dense_unit, n_units, privacy.max_groups_per_unit, rng)
    if keep is not None:
        pair_cell = pair_cell[keep]
        if pair_sum is not None:
            pair_sum = pair_sum[keep]

    # Compact to the cells that still hold a unit.
    units_full = np.bincount(pair_cell, minlength=width)
    live = np.flatnonzero(units_full)
    remap = np.full(width, -1, dtype=np.int64)
    remap[live] = np.arange(len(live), dtype=np.int64)
    cell = remap[pair_cell]
    per_cell = units_full[live].astype(np.int64)

    sums = top = abs_totals = None
    if pair_sum is not None:
        sums = np.bincount(cell, weights=pair_sum, minlength=len(live)).astype(np.float64)
        mags = np.abs(pair_sum)
        abs_totals = np.bincount(cell, weights=mags, minlength=len(live)).astype(np.float64)
        top = _top_per_cell(cell, mags, len(live), max(top_n, 2))

    return BoundedAggregate(
        keys=cells.keys_of(frame, live),
        units=per_cell,
        sums=sums,
        top=top,
        abs_totals=abs_totals,
        rows_in=len(frame),
        units_in=n_units,
        units_verified=known_units is not None,
    )


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


def _top_per_cell(cell: np.ndarray, mags: np.ndarray, n_cells: int, n: int) -> np.ndarray:
    """(cells, n) array of each cell's ``n`` largest magnitudes, zero-padded.

    ``n`` rounds of per-cell max, each removing one occurrence of the max.
    """
    top = np.zeros((n_cells, n), dtype=np.float64)
    if len(cell) == 0:
        return top
    left = mags.astype(np.float64, copy=True)
    positions = np.arange(len(cell), dtype=np.int64)
    for r in range(n):
        best = np.full(n_cells, -np.inf)
        np.maximum.at(best, cell, left)
        top[:, r] = np.where(np.isfinite(best), best, 0.0)
        if r == n - 1:
            break
        hit = np.flatnonzero(left == best[cell])
        first = np.full(n_cells, len(cell), dtype=np.int64)
        np.minimum.at(first, cell[hit], positions[hit])
        left[first[first < len(cell)]] = -np.inf
    return top
