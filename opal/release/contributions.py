"""The contributions contract: what an algorithm may hand to the release gate.

An algorithm returns ``[unit, group columns…, (value)]``. Before anything is
aggregated the gate checks that table against the bundle's ``[privacy]``
declaration and refuses it (``ReleaseRefused``) when it breaks a rule. Every
message names the column and the rule, never a value from the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from opal.errors import ReleaseRefused
from opal.release.policy import PrivacySpec

__all__ = ["Layout", "check_layout", "output_column"]


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Which column of the contributions plays which part."""

    unit: str
    groups: tuple[str, ...]
    value: str | None


def output_column(privacy: PrivacySpec) -> str:
    """Name of the released value column: ``count``, ``sum`` or ``mean``."""
    return privacy.aggregation


def check_layout(contributions: object, privacy: PrivacySpec) -> Layout:
    """Check the columns of ``contributions`` against ``privacy``.

    Raises ``ReleaseRefused`` naming the column and the rule broken.
    """
    if not isinstance(contributions, pd.DataFrame):
        raise ReleaseRefused(
            "contributions must be a pandas DataFrame [unit, group columns…, value], "
            f"found {type(contributions).__name__}; return a DataFrame from the entrypoint"
        )
    columns = list(contributions.columns)
    if not all(isinstance(c, str) for c in columns):
        raise ReleaseRefused(
            "contributions column names must be strings; rename the columns in the algorithm"
        )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ReleaseRefused(
            f"contributions have duplicate column name(s) {', '.join(map(repr, duplicated))}; "
            "give every column a distinct name"
        )
    if privacy.unit not in columns:
        raise ReleaseRefused(
            f"contributions have no privacy-unit column {privacy.unit!r} (declared as "
            "[privacy] unit); return it with the dataset's own unit ids"
        )
    value: str | None = None
    if privacy.aggregation == "count":
        if privacy.value_column in columns and (
            privacy.groups is None or privacy.value_column not in privacy.groups
        ):
            raise ReleaseRefused(
                f"contributions have a value column {privacy.value_column!r}, but aggregation "
                "'count' takes no value; drop it, or declare aggregation = \"sum\" or \"mean\""
            )
    else:
        value = privacy.value_column
        if value not in columns:
            raise ReleaseRefused(
                f"contributions have no value column {value!r}, required for aggregation "
                f"{privacy.aggregation!r}; return it, or set [privacy] value_column"
            )
    others = [c for c in columns if c != privacy.unit and c != value]
    if privacy.groups is not None:
        unknown = [c for c in others if c not in privacy.groups]
        if unknown:
            raise ReleaseRefused(
                f"contributions have undeclared column(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {privacy.unit!r}, "
                + ", ".join(repr(g) for g in privacy.groups)
                + (f", {value!r}" if value else "")
                + "; drop them or declare them in [privacy] groups"
            )
        missing = [g for g in privacy.groups if g not in columns]
        if missing:
            raise ReleaseRefused(
                f"contributions lack declared group column(s) {', '.join(map(repr, missing))}; "
                "return them or fix [privacy] groups"
            )
        groups = tuple(privacy.groups)
    else:
        groups = tuple(others)
    out = output_column(privacy)
    if out in groups:
        raise ReleaseRefused(
            f"group column {out!r} clashes with the released column {out!r}; rename it"
        )
    if value is not None:
        dtype = contributions[value].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            raise ReleaseRefused(
                f"value column {value!r} must be numeric, found dtype {dtype}; "
                "convert it in the algorithm"
            )
    return Layout(unit=privacy.unit, groups=groups, value=value)


def check_finite_values(values: np.ndarray, column: str) -> None:
    """Refuse NaN or infinite values in the value column."""
    if not np.isfinite(values).all():
        raise ReleaseRefused(
            f"value column {column!r} holds non-finite values (NaN or infinity); "
            "drop or fill them in the algorithm"
        )


def factorize_unit(series: pd.Series, known_units: object | None) -> tuple[np.ndarray, int]:
    """Integer codes of the unit column; refuses missing units and units the
    dataset does not have.

    # invented units: an algorithm that makes up unit ids could split one
    # person's rows over many ids and slip past the contribution bound.
    """
    codes, uniques = pd.factorize(series, sort=False, use_na_sentinel=True)
    if len(codes) and codes.min() < 0:
        raise ReleaseRefused(
            f"privacy-unit column {series.name!r} holds missing values; "
            "every contribution needs a unit"
        )
    if known_units is not None:
        known = known_units if isinstance(known_units, (pd.Series, pd.Index)) else pd.Index(
            np.asarray(known_units)
        )
        try:
            ok = pd.Index(uniques).isin(known)
        except TypeError:
            ok = np.zeros(len(uniques), dtype=bool)
        if not bool(np.all(ok)):
            raise ReleaseRefused(
                f"privacy-unit column {series.name!r} holds values that are not units of the "
                f"dataset; return the dataset's own {series.name!r} values, unchanged"
            )
    return codes.astype(np.int64, copy=False), len(uniques)


def factorize_groups(frame: pd.DataFrame, groups: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """One integer cell code per row over all group columns (0 cells → all zero)."""
    n = len(frame)
    if not groups:
        return np.zeros(n, dtype=np.int64), (1 if n else 0)
    combined: np.ndarray | None = None
    size = 1
    for col in groups:
        series = frame[col]
        if pd.api.types.is_float_dtype(series.dtype) and not np.isfinite(
            series.to_numpy(dtype=float, na_value=np.nan)
        ).all():
            if series.isna().any():
                raise _missing_group(col)
            raise ReleaseRefused(
                f"group column {col!r} holds infinite values; fix them in the algorithm"
            )
        try:
            codes, uniques = pd.factorize(series, sort=False, use_na_sentinel=True)
        except TypeError:
            raise ReleaseRefused(
                f"group column {col!r} holds values that cannot be grouped (lists, dicts…); "
                "return scalars"
            ) from None
        if len(codes) and codes.min() < 0:
            raise _missing_group(col)
        codes = codes.astype(np.int64, copy=False)
        k = max(len(uniques), 1)
        if combined is None:
            combined, size = codes, k
        elif size * k < 2**62:
            combined, size = combined * k + codes, size * k
        else:
            combined, firsts = pd.factorize(combined, sort=False)
            combined = combined.astype(np.int64) * k + codes
            size = len(firsts) * k
    assert combined is not None
    if size > n:
        # Compact sparse mixed-radix codes so per-cell arrays stay small.
        combined, firsts = pd.factorize(combined, sort=False)
        combined = combined.astype(np.int64, copy=False)
        size = len(firsts)
    return combined, size


def _missing_group(col: str) -> ReleaseRefused:
    return ReleaseRefused(
        f"group column {col!r} holds missing values; fill them (e.g. with \"unknown\") "
        "in the algorithm"
    )
