"""Contribution bounding: at most max_groups_per_unit cells per unit, chosen
uniformly at random among the unit's cells (not its rows), from OS randomness.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from opal.release import bounded_aggregate, sensitivity
from tests.release.release_fixtures import domains_of
from tests.release.release_fixtures import spec as make_spec

CELLS = {"cell": tuple(range(10))}


def agg_of(df: pd.DataFrame, privacy, **kw):  # type: ignore[no-untyped-def]
    return bounded_aggregate(df, privacy, domains_of(privacy), **kw)


def spread(n_units: int, cells_per_unit: int) -> pd.DataFrame:
    units = np.repeat(np.arange(n_units, dtype=np.int64), cells_per_unit)
    cells = np.tile(np.arange(cells_per_unit), n_units)
    return pd.DataFrame({"msisdn": units, "cell": cells})


def test_every_unit_keeps_at_most_the_bound() -> None:
    spec = make_spec(CELLS, max_groups_per_unit=3)
    df = pd.concat([spread(50, 10), spread(50, 2).assign(msisdn=lambda d: d.msisdn + 1000)])
    agg = agg_of(df, spec)
    assert int(agg.units.sum()) == 50 * 3 + 50 * 2
    assert agg.units_in == 100


def test_selection_is_uniform_over_cells() -> None:
    n, k, m = 3000, 10, 3
    agg = agg_of(spread(n, k), make_spec(CELLS, max_groups_per_unit=m))
    assert len(agg.units) == k
    # Each cell is kept by a unit with p = 0.3: binomial sd 25; 6 sd = 150
    # (P < 1e-8 for each of the 10 cells).
    sd = math.sqrt(n * (m / k) * (1 - m / k))
    assert np.all(np.abs(agg.units - n * m / k) <= 6 * sd)


def test_selection_weighs_cells_not_rows() -> None:
    n = 3000
    ids = np.arange(n, dtype=np.int64)
    heavy = pd.DataFrame({"msisdn": np.repeat(ids, 200), "cell": "A"})
    light = pd.DataFrame({"msisdn": np.concatenate([ids, ids]), "cell": ["B"] * n + ["C"] * n})
    abc = make_spec({"cell": ("A", "B", "C")}, max_groups_per_unit=1)
    agg = agg_of(pd.concat([heavy, light], ignore_index=True), abc)
    got = dict(zip(("A", "B", "C"), agg.units, strict=True))
    # A is one of three cells, whatever its 200 rows: p = 1/3, sd 25.8; 6 sd = 155.
    sd = math.sqrt(n * (1 / 3) * (2 / 3))
    assert abs(got["A"] - n / 3) <= 6 * sd
    assert sum(got.values()) == n


def test_selection_draws_from_the_os_and_can_be_pinned_for_tests() -> None:
    df = spread(2000, 10)
    spec = make_spec(CELLS, max_groups_per_unit=1)
    a = agg_of(df, spec).units
    b = agg_of(df, spec).units
    # Identical histograms of 2000 uniform choices over 10 cells: P < 1e-15.
    assert not np.array_equal(a, b)
    pinned = [
        agg_of(df, spec, rng=np.random.Generator(np.random.PCG64(1))).units
        for _ in range(2)
    ]
    assert np.array_equal(*pinned)


def test_values_are_clamped_per_row_and_per_unit_cell() -> None:
    spec = make_spec({"cell": ("x", "y")}, aggregation="sum", value_bounds=(-1.0, 2.0))
    df = pd.DataFrame(
        {"msisdn": [1, 1, 2, 3], "cell": ["x", "x", "x", "x"], "value": [1.5, 1.5, -50.0, 0.5]}
    )
    agg = agg_of(df, spec)
    # unit 1: 1.5 + 1.5 = 3 -> 2; unit 2: -50 -> -1; unit 3: 0.5. Cell y of the domain is empty.
    assert agg.sums.tolist() == [1.5, 0.0]
    assert agg.units.tolist() == [3, 0]


def test_sensitivity_comes_from_the_declared_bounds() -> None:
    s = sensitivity(
        make_spec(unit="u", aggregation="sum", value_bounds=(-3.0, 12.0), max_groups_per_unit=4)
    )
    assert (s.cells, s.count_l1, s.count_linf) == (4, 4, 1)
    assert (s.sum_linf, s.sum_l1) == (12.0, 48.0)
    assert s.sum_l2 == 2 * 12.0
    assert (s.centered_linf, s.centered_l1) == (7.5, 30.0)


def test_large_sparse_unit_ids_and_string_units_bound_alike() -> None:
    spec = make_spec({"cell": tuple(range(5))}, max_groups_per_unit=2)
    df = spread(500, 5)
    pinned = np.random.Generator(np.random.PCG64(3))
    a = agg_of(df.assign(msisdn=df.msisdn * 10**15 + 7), spec, rng=pinned)
    b = agg_of(df.assign(msisdn=df.msisdn.astype(str)), spec)
    assert int(a.units.sum()) == int(b.units.sum()) == 1000
    assert a.units_in == b.units_in == 500


def test_labels_outside_the_public_domain_are_dropped_and_counted() -> None:
    spec = make_spec({"cell": ("x", "y")})
    df = pd.DataFrame({"msisdn": [1, 2, 3, 4, 5], "cell": ["x", "y", "z", None, "x"]})
    agg = agg_of(df, spec)
    assert agg.units.tolist() == [2, 1]
    assert agg.dropped == {"group label missing or outside the public domain": 2}
