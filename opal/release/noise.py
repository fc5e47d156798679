"""Calibrated noise. Every random number the gate releases is drawn by OpenDP,
which samples from the operating system's randomness; numpy's and Python's
generators are never used for noise.

Counts go through OpenDP's ``make_laplace_threshold`` (discrete Laplace on
integer counts, then keep a key only if its noisy count reaches the
threshold). Its privacy map gives the (epsilon, delta) of releasing group keys
that came from the data; the threshold is raised until that delta is within
the policy's. Sums go through ``make_laplace`` (L1) or ``make_gaussian`` (L2,
zCDP converted to approximate DP at a fixed delta).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import opendp.prelude as dp

from opal.errors import ReleaseRefused

dp.enable_features("contrib")

__all__ = [
    "CountPlan",
    "SumPlan",
    "discrete_laplace_mean_abs",
    "discrete_laplace_tail",
    "noisy_threshold_counts",
    "noisy_values",
    "plan_count",
    "plan_sum",
]

_MAX_THRESHOLD = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class CountPlan:
    """Discrete Laplace on distinct-unit counts with a release threshold."""

    scale: float
    threshold: int
    epsilon: float  # from OpenDP's privacy map
    delta: float  # from OpenDP's privacy map: a new key slipping through
    cells: int  # l0: cells one unit can touch
    linf: int = 1  # most one unit moves one cell's count

    def describe(self) -> dict[str, Any]:
        return {
            "mechanism": "discrete_laplace",
            "implementation": "opendp.measurements.make_laplace_threshold",
            "scale": self.scale,
            "threshold": self.threshold,
            "sensitivity": {"l0": self.cells, "l1": self.cells * self.linf, "linf": self.linf},
            "epsilon": self.epsilon,
            "delta": self.delta,
        }


@dataclass(frozen=True, kw_only=True)
class SumPlan:
    """Laplace (L1) or Gaussian (L2) noise on a vector of per-cell sums."""

    mechanism: str  # laplace | gaussian
    scale: float  # Laplace b, or Gaussian standard deviation
    epsilon: float
    delta: float
    sensitivity: float  # l1 for laplace, l2 for gaussian

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
        }


# --- counts -----------------------------------------------------------------


def _threshold_space() -> tuple[Any, Any]:
    return (
        dp.map_domain(dp.atom_domain(T=dp.i64), dp.atom_domain(T=dp.i64)),
        dp.l01inf_distance(dp.absolute_distance(T=dp.i64)),
    )


def _threshold_measurement(scale: float, threshold: int) -> Any:
    return dp.m.make_laplace_threshold(*_threshold_space(), scale=scale, threshold=threshold)


def plan_count(*, epsilon: float, cells: int, min_units: int, delta: float) -> CountPlan:
    """Scale for ``epsilon`` and the smallest threshold >= ``min_units`` (and >= 1)
    whose key-selection delta is <= ``delta``.

    Raises ``ReleaseRefused`` if no threshold can reach ``delta``.
    """
    return _plan_count(float(epsilon), int(cells), int(min_units), float(delta))


@functools.lru_cache(maxsize=256)
def _plan_count(epsilon: float, cells: int, min_units: int, delta: float) -> CountPlan:
    d_in = (cells, cells, 1)
    scale = _calibrate(
        lambda s: _threshold_measurement(s, _MAX_THRESHOLD).map(d_in)[0], cells / epsilon, epsilon
    )

    def delta_at(t: int) -> float:
        return float(_threshold_measurement(scale, t).map(d_in)[1])

    lo = max(int(min_units), 1)
    if delta_at(lo) <= delta:
        threshold = lo
    else:
        hi = lo
        while delta_at(hi) > delta:
            if hi >= _MAX_THRESHOLD:
                raise ReleaseRefused(
                    f"no release threshold keeps the key-selection delta under {delta}; "
                    "raise epsilon or lower max_groups_per_unit"
                )
            lo, hi = hi, min(hi * 2, _MAX_THRESHOLD)
        while hi - lo > 1:  # invariant: delta_at(lo) > delta >= delta_at(hi)
            mid = (lo + hi) // 2
            if delta_at(mid) <= delta:
                hi = mid
            else:
                lo = mid
        threshold = hi
    eps_out, delta_out = _threshold_measurement(scale, threshold).map(d_in)
    return CountPlan(
        scale=scale,
        threshold=threshold,
        epsilon=float(eps_out),
        delta=float(delta_out),
        cells=cells,
    )


def noisy_threshold_counts(units: np.ndarray, plan: CountPlan) -> tuple[np.ndarray, np.ndarray]:
    """Noise every cell's count; return (indices of cells that reached the
    threshold, their noisy counts), in cell order."""
    if len(units) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    meas = _threshold_measurement(plan.scale, plan.threshold)
    out: dict[int, int] = meas(dict(zip(range(len(units)), units.tolist(), strict=True)))
    kept = np.fromiter(out.keys(), dtype=np.int64, count=len(out))
    noisy = np.fromiter(out.values(), dtype=np.int64, count=len(out))
    order = np.argsort(kept)
    return kept[order], noisy[order]


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
