"""Dominance rules for sum and mean cells, as ACRO applies them.

* n-k rule: suppress when the ``n`` largest contributors hold more than ``k``
  of the cell total (ACRO default n=2, k=0.90).
* p% rule: suppress when ``total - largest - second largest < p * largest``,
  i.e. the second-largest contributor could estimate the largest to within
  p percent (ACRO default p=0.10). As in ACRO, a cell whose total is not
  positive, or that has a single contributor, fails the p% rule.

Contributions here are each unit's clamped value in the cell; the rules use
their magnitudes, so negative values dominate as much as positive ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["dominance_failures", "nk_fails", "p_percent_fails"]


def nk_fails(top: np.ndarray, totals: np.ndarray, *, n: int, k: float) -> np.ndarray:
    """Per cell: do the ``n`` largest magnitudes hold more than ``k`` of the total?

    ``top`` is (cells, >= n), descending per row; ``totals`` the sum of magnitudes.
    """
    lead = top[:, :n].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, lead > k * totals, False)


def p_percent_fails(
    top: np.ndarray, totals: np.ndarray, counts: np.ndarray, *, p: float
) -> np.ndarray:
    """Per cell: is ``total - largest - second < p * largest``?

    ``counts`` is the number of contributors per cell (true, pre-noise).
    """
    first = top[:, 0]
    second = top[:, 1] if top.shape[1] > 1 else np.zeros_like(first)
    rest = totals - first - second
    small = (totals <= 0) | (counts <= 1)
    fails: np.ndarray = small | (rest < p * first)
    return fails


def dominance_failures(
    values: Sequence[float], *, n: int = 2, k: float = 0.90, p: float = 0.10
) -> tuple[str, ...]:
    """The rules (``"n-k"``, ``"p%"``) one cell of contributions fails: a
    convenience over the vectorized rules, for tests and reviewers."""
    mags = np.sort(np.abs(np.asarray(values, dtype=np.float64)))[::-1]
    width = max(n, 2)
    top = np.zeros((1, width))
    top[0, : min(width, len(mags))] = mags[:width]
    totals = np.array([mags.sum()])
    counts = np.array([len(mags)])
    failed = []
    if nk_fails(top, totals, n=n, k=k)[0]:
        failed.append("n-k")
    if p_percent_fails(top, totals, counts, p=p)[0]:
        failed.append("p%")
    return tuple(failed)
