"""The released noise has the scale the mechanism states.

Thousands of large cells (far over the threshold, so none is suppressed) go
through the real gate once; the empirical spread of released - true is
compared with the stated scale. Tolerances are >= 5 standard errors of the
estimator, so a false failure has probability < 1e-6 (the estimators are
means of light-tailed variables, where the normal approximation holds well
at this size).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from opal.release import ReleasePolicy
from opal.release import release as gate_release
from opal.release.noise import discrete_laplace_mean_abs, discrete_laplace_tail
from tests.release.release_fixtures import domains_of
from tests.release.release_fixtures import spec as make_spec


def PrivacySpec(**kw):  # type: ignore[no-untyped-def]  # noqa: N802 - every cell of grid() is in the domain
    return make_spec({"cell": tuple(range(4000))}, **kw)


def release(df, *, privacy, **kw):  # type: ignore[no-untyped-def]
    n = int(df["cell"].max()) + 1
    sized = make_spec({"cell": tuple(range(n))}, **{k: getattr(privacy, k) for k in (
        "unit", "aggregation", "max_groups_per_unit", "value_bounds")})
    return gate_release(df, privacy=sized, domains=domains_of(sized), **kw)

POLICY = ReleasePolicy()


def grid(n_cells: int, units_per_cell: int, value: float | None = None) -> pd.DataFrame:
    ids = np.arange(n_cells * units_per_cell, dtype=np.int64)
    df = pd.DataFrame({"msisdn": ids, "cell": ids // units_per_cell})
    if value is not None:
        df["value"] = value
    return df


def test_count_noise_has_the_stated_discrete_laplace_scale() -> None:
    n_cells, size = 4000, 60
    spec = PrivacySpec(unit="msisdn", max_groups_per_unit=1)
    r = release(grid(n_cells, size), privacy=spec, policy=POLICY, epsilon=1.0)
    scale, tau = r.mechanism["count"]["scale"], r.mechanism["min_units_per_cell"]
    assert scale == pytest.approx(1.0)
    assert n_cells * discrete_laplace_tail(scale, size - tau + 1) < 1e-6
    assert r.cells_released == n_cells
    err = r.table["count"].to_numpy(dtype=float) - size
    # E|Z| = 0.851, sd|Z| = 1.06: standard error 0.017; 15% is 7.6 of them.
    expected = discrete_laplace_mean_abs(scale)
    assert abs(np.mean(np.abs(err)) - expected) <= 0.15 * expected
    assert abs(np.mean(err)) <= 0.15  # unbiased: se 0.023, 6.5 se
    assert np.all(err == np.round(err))


def test_count_noise_scales_with_the_contribution_bound() -> None:
    n_cells, size = 2000, 800
    spec = PrivacySpec(unit="msisdn", max_groups_per_unit=10)
    r = release(grid(n_cells, size), privacy=spec, policy=POLICY, epsilon=1.0)
    scale, tau = r.mechanism["count"]["scale"], r.mechanism["min_units_per_cell"]
    assert scale == pytest.approx(10.0)
    assert n_cells * discrete_laplace_tail(scale, size - tau + 1) < 1e-6
    err = r.table["count"].to_numpy(dtype=float) - size
    # E|Z| ~ 9.99, sd|Z| ~ 10: standard error 0.22; 15% is 6.7 of them.
    expected = discrete_laplace_mean_abs(scale)
    assert abs(np.mean(np.abs(err)) - expected) <= 0.15 * expected


def test_sum_noise_has_the_stated_laplace_scale() -> None:
    n_cells, size = 2000, 150
    spec = PrivacySpec(unit="msisdn", aggregation="sum", value_bounds=(0.0, 1.0))
    r = release(grid(n_cells, size, value=1.0), privacy=spec, policy=POLICY, epsilon=1.0)
    m = r.mechanism
    assert m["sum"]["scale"] == pytest.approx(2.0)  # sensitivity 1 / (epsilon / 2)
    assert n_cells * discrete_laplace_tail(m["count"]["scale"], size - m["min_units_per_cell"] + 1) < 1e-6
    err = r.table["sum"].to_numpy(dtype=float) - size
    # |Laplace(b)| is exponential: mean b, sd b; se over 2000 is 0.045 for b=2,
    # and rounding to 0.01 moves the mean by < 0.005. 15% is 6.7 se.
    assert abs(np.mean(np.abs(err)) - 2.0) <= 0.15 * 2.0


def test_sum_noise_has_the_stated_gaussian_scale() -> None:
    n_cells, size = 2000, 150
    spec = PrivacySpec(unit="msisdn", aggregation="sum", value_bounds=(0.0, 1.0))
    policy = ReleasePolicy(sum_mechanism="gaussian")
    r = release(grid(n_cells, size, value=1.0), privacy=spec, policy=policy, epsilon=1.0)
    m = r.mechanism
    sigma = m["sum"]["scale"]
    assert 5.0 < sigma < 20.0  # ~11.5 for epsilon 0.5, delta 5e-10, l2 sensitivity 1
    assert n_cells * discrete_laplace_tail(m["count"]["scale"], size - m["min_units_per_cell"] + 1) < 1e-6
    released = r.table["sum"].to_numpy(dtype=float)
    # Clamping at 0 only touches draws below -150 (> 13 sigma): none.
    err = released - size
    # Sample sd of 2000 normals has relative se 1/sqrt(4000) = 1.6%; 10% is 6 se.
    assert abs(np.std(err) / sigma - 1.0) <= 0.10
    assert abs(np.mean(err)) <= 6 * sigma / math.sqrt(n_cells)


def test_mean_is_close_to_the_truth_for_large_cells() -> None:
    n_cells, size = 200, 2000
    spec = PrivacySpec(unit="msisdn", aggregation="mean", value_bounds=(0.0, 10.0))
    r = release(grid(n_cells, size, value=3.0), privacy=spec, policy=POLICY, epsilon=1.0)
    # noise on sum(value - 5) has b = 5 / 0.5 = 10; divided by ~2000 units the
    # error is ~0.005 (b/n): a bound of 0.2 is 20 b/n, P(|Laplace| > 20 b) = e^-20
    # per cell, plus <= 0.005 rounding and a 0.1% denominator error.
    assert r.cells_released == n_cells
    assert np.all(np.abs(r.table["mean"].to_numpy(dtype=float) - 3.0) <= 0.2)


@pytest.mark.parametrize("aggregation", ["count", "sum", "mean"])
def test_stated_95_percent_intervals_hold_the_truth_at_the_stated_rate(aggregation: str) -> None:
    n_cells, size = 2000, 100
    bounds = None if aggregation == "count" else (0.0, 10.0)
    spec = PrivacySpec(aggregation=aggregation, max_groups_per_unit=3, value_bounds=bounds)
    df = grid(n_cells, size, value=None if aggregation == "count" else 4.0)
    r = release(df, privacy=spec, policy=POLICY, epsilon=1.0)
    truth = {"count": size, "sum": 4.0 * size, "mean": 4.0}[aggregation]
    released = ~r.table["suppressed"].to_numpy(dtype=bool)
    low = r.table["ci_low"].to_numpy(dtype=float)[released]
    high = r.table["ci_high"].to_numpy(dtype=float)[released]
    covered = float(np.mean((low <= truth) & (truth <= high)))
    # Coverage is >= 95 % by construction (the discrete and union-bound intervals
    # are conservative); the binomial se over 2000 cells is <= 0.0049, so 0.925 is
    # > 5 se below: P(false failure) < 1e-6.
    assert covered >= 0.925
    assert released.mean() > 0.99
    assert (r.table["noise_scale"] > 0).all()
