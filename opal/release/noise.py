"""Calibrated noise. Every random number the gate releases is drawn by OpenDP,
which samples from the operating system's randomness; numpy's and Python's
generators are never used for noise.

Group keys are public domains (``opal.release.domains``), so every cell of the
domain is released with noise and no partition selection is needed: counts
go through OpenDP's ``make_laplace`` on a vector of integer counts (discrete
Laplace, L1 sensitivity ``max_groups_per_unit``), sums through
``make_laplace`` (L1) or ``make_gaussian`` (L2, zCDP converted to
approximate DP at a fixed delta). Each plan states its noise scale and the
half-width of a two-sided interval that holds the noise with a chosen
probability, which the gate turns into each cell's 95 % interval.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import opendp.prelude as dp

from opal.errors import ReleaseRefused

dp.enable_features("contrib")

__all__ = [
    "CountPlan",
    "SumPlan",
    "discrete_laplace_half_width",
    "discrete_laplace_mean_abs",
    "discrete_laplace_tail",
    "noisy_counts",
    "noisy_values",
    "plan_count",
    "plan_sum",
]


@dataclass(frozen=True, kw_only=True)
class CountPlan:
    """Discrete Laplace on the distinct-unit count of every cell of the domain."""

    scale: float
    epsilon: float  # from OpenDP's privacy map
    cells: int  # l0: cells one unit can touch (= the L1 sensitivity, linf 1)

    def half_width(self, confidence: float = 0.95) -> int:
        """Smallest k with P(|noise| > k) <= 1 - confidence."""
        return discrete_laplace_half_width(self.scale, 1.0 - confidence)

    def describe(self) -> dict[str, Any]:
        return {
            "mechanism": "discrete_laplace",
            "implementation": "opendp.measurements.make_laplace (integer vector, L1)",
            "scale": self.scale,
            "sensitivity": {"l0": self.cells, "l1": self.cells, "linf": 1},
            "epsilon": self.epsilon,
            "delta": 0.0,
            "interval_95_half_width": self.half_width(),
        }


@dataclass(frozen=True, kw_only=True)
class SumPlan:
    """Laplace (L1) or Gaussian (L2) noise on a vector of per-cell sums."""

    mechanism: str  # laplace | gaussian
    scale: float  # Laplace b, or Gaussian standard deviation
    epsilon: float
    delta: float
    sensitivity: float  # l1 for laplace, l2 for gaussian

    def half_width(self, confidence: float = 0.95) -> float:
        """Half-width t with P(|noise| > t) = 1 - confidence."""
        alpha = 1.0 - confidence
        if self.mechanism == "laplace":
            return self.scale * math.log(1.0 / alpha)
        return self.scale * statistics.NormalDist().inv_cdf(1.0 - alpha / 2.0)

    def describe(self) -> dict[str, Any]:
        impl = {
            "laplace": "opendp.measurements.make_laplace",
            "gaussian": "opendp.measurements.make_gaussian + make_zCDP_to_approxDP + make_fix_delta",
        }[self.mechanism]
        norm = "l1" if self.mechanism == "laplace" else "l2"
        return {
            "mechanism": self.mechanism,
            "implementation": impl,
            "scale": self.scale,
            "sensitivity": {norm: self.sensitivity},
            "epsilon": self.epsilon,
            "delta": self.delta,
            "interval_95_half_width": self.half_width(),
        }


# --- counts -----------------------------------------------------------------


def _int_vector_laplace(scale: float) -> Any:
    return dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l1_distance(T=dp.i64), scale=scale
    )


def plan_count(*, epsilon: float, cells: int) -> CountPlan:
    """Discrete Laplace scale for counts over a public domain: one unit changes
    at most ``cells`` counts by one each (L1 = ``cells``)."""
    return _plan_count(float(epsilon), int(cells))


@functools.lru_cache(maxsize=256)
def _plan_count(epsilon: float, cells: int) -> CountPlan:
    scale = _calibrate(lambda s: _int_vector_laplace(s).map(cells), cells / epsilon, epsilon)
    return CountPlan(
        scale=scale, epsilon=float(_int_vector_laplace(scale).map(cells)), cells=cells
    )


def noisy_counts(units: np.ndarray, plan: CountPlan) -> np.ndarray:
    """Noise every cell's count (int64, cell order)."""
    if len(units) == 0:
        return np.zeros(0, dtype=np.int64)
    out = _int_vector_laplace(plan.scale)(units.astype(np.int64).tolist())
    return np.asarray(out, dtype=np.int64)


# --- sums -------------------------------------------------------------------


def _float_vector_space(norm: str) -> tuple[Any, Any]:
    metric = dp.l1_distance(T=float) if norm == "l1" else dp.l2_distance(T=float)
    return dp.vector_domain(dp.atom_domain(T=float, nan=False)), metric


def _laplace(scale: float) -> Any:
    return dp.m.make_laplace(*_float_vector_space("l1"), scale=scale)


def _gaussian(scale: float, delta: float) -> Any:
    return dp.c.make_fix_delta(
        dp.c.make_zCDP_to_approxDP(dp.m.make_gaussian(*_float_vector_space("l2"), scale=scale)),
        delta=delta,
    )


def plan_sum(*, mechanism: str, epsilon: float, delta: float, l1: float, l2: float) -> SumPlan:
    """Noise scale for per-cell sums with the given sensitivities."""
    return _plan_sum(mechanism, float(epsilon), float(delta), float(l1), float(l2))


@functools.lru_cache(maxsize=256)
def _plan_sum(mechanism: str, epsilon: float, delta: float, l1: float, l2: float) -> SumPlan:
    if mechanism == "laplace":
        scale = _calibrate(lambda s: _laplace(s).map(l1), l1 / epsilon, epsilon)
        return SumPlan(
            mechanism="laplace",
            scale=scale,
            epsilon=float(_laplace(scale).map(l1)),
            delta=0.0,
            sensitivity=l1,
        )
    if mechanism == "gaussian":
        scale = float(
            dp.binary_search_param(lambda s: _gaussian(s, delta), d_in=l2, d_out=(epsilon, delta))
        )
        eps_out, delta_out = _gaussian(scale, delta).map(l2)
        return SumPlan(
            mechanism="gaussian",
            scale=scale,
            epsilon=float(eps_out),
            delta=float(delta_out),
            sensitivity=l2,
        )
    raise ReleaseRefused(f"unknown sum mechanism {mechanism!r}; use laplace or gaussian")


def noisy_values(values: np.ndarray, plan: SumPlan) -> np.ndarray:
    """Noise a vector of per-cell sums with ``plan``."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.float64)
    vec = np.ascontiguousarray(values, dtype=np.float64)
    meas = (
        _laplace(plan.scale) if plan.mechanism == "laplace" else _gaussian(plan.scale, plan.delta)
    )
    return np.asarray(meas(vec), dtype=np.float64)


# --- helpers ----------------------------------------------------------------


def _calibrate(eps_of_scale: Any, scale: float, epsilon: float) -> float:
    """Nudge ``scale`` up until OpenDP's map says it costs at most ``epsilon``
    (the map rounds conservatively, so Δ/ε can land one ulp over)."""
    for _ in range(64):
        if float(eps_of_scale(scale)) <= epsilon:
            return scale
        scale = math.nextafter(scale, math.inf) * (1 + 1e-12)
    raise ReleaseRefused(f"cannot calibrate noise for epsilon {epsilon}")  # pragma: no cover


def discrete_laplace_mean_abs(scale: float) -> float:
    """E|Z| for Z discrete Laplace with P(z) ∝ exp(-|z|/scale): for tests and docs."""
    a = math.exp(-1.0 / scale)
    return 2.0 * a / ((1.0 - a) * (1.0 + a))


def discrete_laplace_tail(scale: float, k: int) -> float:
    """P(Z >= k) (= P(Z <= -k)) for Z discrete Laplace with scale ``scale``, k >= 1."""
    a = math.exp(-1.0 / scale)
    return a**k / (1.0 + a)


def discrete_laplace_half_width(scale: float, alpha: float) -> int:
    """Smallest k >= 0 with P(|Z| > k) = 2 a^(k+1) / (1 + a) <= ``alpha``."""
    a = math.exp(-1.0 / scale)
    k = max(0, math.ceil(math.log(alpha * (1.0 + a) / 2.0) / math.log(a)) - 1)
    while k > 0 and 2.0 * a**k / (1.0 + a) <= alpha:  # float rounding: the smallest one
        k -= 1
    while 2.0 * a ** (k + 1) / (1.0 + a) > alpha:
        k += 1
    return k
