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

from opal.release import PrivacySpec, ReleasePolicy, release
from opal.release.noise import discrete_laplace_mean_abs, discrete_laplace_tail

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
    scale, tau = r.mechanism["count"]["scale"], r.mechanism["threshold"]
    assert scale == pytest.approx(1.0)
    assert n_cells * discrete_laplace_tail(scale, size - tau + 1) < 1e-6
    assert r.cells_released == n_cells
    err = r.table["count"].to_numpy() - size
    # E|Z| = 0.851, sd|Z| = 1.06: standard error 0.017; 15% is 7.6 of them.
    expected = discrete_laplace_mean_abs(scale)
    assert abs(np.mean(np.abs(err)) - expected) <= 0.15 * expected
    assert abs(np.mean(err)) <= 0.15  # unbiased: se 0.023, 6.5 se
    assert np.all(err == np.round(err))


def test_count_noise_scales_with_the_contribution_bound() -> None:
    n_cells, size = 2000, 800
    spec = PrivacySpec(unit="msisdn", max_groups_per_unit=10)
    r = release(grid(n_cells, size), privacy=spec, policy=POLICY, epsilon=1.0)
    scale, tau = r.mechanism["count"]["scale"], r.mechanism["threshold"]
    assert scale == pytest.approx(10.0)
    assert n_cells * discrete_laplace_tail(scale, size - tau + 1) < 1e-6
    err = r.table["count"].to_numpy() - size
    # E|Z| ~ 9.99, sd|Z| ~ 10: standard error 0.22; 15% is 6.7 of them.
    expected = discrete_laplace_mean_abs(scale)
    assert abs(np.mean(np.abs(err)) - expected) <= 0.15 * expected


def test_sum_noise_has_the_stated_laplace_scale() -> None:
    n_cells, size = 2000, 150
    spec = PrivacySpec(unit="msisdn", aggregation="sum", value_bounds=(0.0, 1.0))
    r = release(grid(n_cells, size, value=1.0), privacy=spec, policy=POLICY, epsilon=1.0)
    m = r.mechanism
    assert m["sum"]["scale"] == pytest.approx(2.0)  # sensitivity 1 / (epsilon / 2)
    assert n_cells * discrete_laplace_tail(m["count"]["scale"], size - m["threshold"] + 1) < 1e-6
    err = r.table["sum"].to_numpy() - size
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
    assert n_cells * discrete_laplace_tail(m["count"]["scale"], size - m["threshold"] + 1) < 1e-6
    released = r.table["sum"].to_numpy()
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
    assert np.all(np.abs(r.table["mean"].to_numpy() - 3.0) <= 0.2)
