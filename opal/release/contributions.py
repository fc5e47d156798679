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

__all__ = [
    "CellCodes",
    "Layout",
    "UnitKeys",
    "cell_codes",
    "check_finite_values",
    "check_known_units",
    "check_layout",
    "declared_columns",
    "output_column",
    "unit_keys",
]


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Which column of the contributions plays which part."""

    unit: str
    groups: tuple[str, ...]
    value: str | None


def declared_columns(privacy: PrivacySpec) -> tuple[str, ...] | None:
    """The exact columns of the contributions — unit, declared groups, value
    (sum/mean) — or None when the bundle does not declare its groups. The
    sandbox checks the table against them while reading it (``Runtime.run``)."""
    if privacy.groups is None:
        return None
    value = () if privacy.aggregation == "count" else (privacy.value_column,)
    return (privacy.unit, *tuple(privacy.groups), *value)


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
                '\'count\' takes no value; drop it, or declare aggregation = "sum" or "mean"'
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


@dataclass(frozen=True, kw_only=True)
class UnitKeys:
    """Non-negative int64 keys for the unit column, dense enough to sort.

    Integer ids are used as they are (shifted by ``offset``) when their range
    is small enough, which spares hashing ten million ids; anything else is
    factorized and ``uniques`` maps keys back to ids.
    """

    keys: np.ndarray
    span: int  # keys lie in [0, span)
    offset: int = 0
    uniques: pd.Index | None = None

    def values_of(self, keys: np.ndarray) -> pd.Index:
        if self.uniques is not None:
            return self.uniques[keys]
        return pd.Index(keys + self.offset)


def unit_keys(series: pd.Series, *, max_span: int) -> UnitKeys:
    """Keys for the unit column; refuses missing units."""
    if series.hasnans:
        raise ReleaseRefused(
            f"privacy-unit column {series.name!r} holds missing values; "
            "every contribution needs a unit"
        )
    if pd.api.types.is_integer_dtype(series.dtype) and len(series):
        ids = series.to_numpy(dtype=np.int64)
        lo, hi = int(ids.min()), int(ids.max())
        if hi - lo + 1 <= max_span:
            return UnitKeys(keys=ids - lo, span=hi - lo + 1, offset=lo)
    try:
        codes, uniques = pd.factorize(series, sort=False, use_na_sentinel=True)
    except TypeError:
        raise ReleaseRefused(
            f"privacy-unit column {series.name!r} holds values that cannot be compared "
            "(lists, dicts…); return the dataset's own unit ids"
        ) from None
    return UnitKeys(
        keys=codes.astype(np.int64, copy=False),
        span=max(len(uniques), 1),
        uniques=pd.Index(uniques),
    )


def check_known_units(units: pd.Index, known_units: object, column: str) -> None:
    """Refuse unit ids the dataset does not have.

    # invented units: an algorithm that makes up unit ids could split one
    # person's rows over many ids and slip past the contribution bound.
    """
    known = (
        known_units
        if isinstance(known_units, (pd.Series, pd.Index))
        else pd.Index(np.asarray(known_units))
    )
    try:
        ok = units.isin(known)
    except TypeError:
        ok = np.zeros(len(units), dtype=bool)
    if not bool(np.all(ok)):
        raise ReleaseRefused(
            f"privacy-unit column {column!r} holds values that are not units of the "
            f"dataset; return the dataset's own {column!r} values, unchanged"
        )


@dataclass(frozen=True, kw_only=True)
class CellCodes:
    """One integer code per row over all group columns, and the way back to keys."""

    codes: np.ndarray
    size: int  # codes lie in [0, size)
    columns: tuple[str, ...]
    uniques: pd.Index | None  # single group column: code -> value

    def keys_of(self, frame: pd.DataFrame, cells: np.ndarray) -> pd.DataFrame:
        """The group-column values of the given cell codes."""
        if not self.columns:
            return pd.DataFrame(index=pd.RangeIndex(len(cells)))
        if self.uniques is not None:
            return pd.DataFrame({self.columns[0]: self.uniques[cells]})
        # Any row of a cell carries its key; which one a duplicate index keeps
        # does not matter.
        first = np.full(self.size, -1, dtype=np.int64)
        first[self.codes] = np.arange(len(self.codes), dtype=np.int64)
        return frame[list(self.columns)].iloc[first[cells]].reset_index(drop=True)


def cell_codes(frame: pd.DataFrame, groups: tuple[str, ...]) -> CellCodes:
    """Codes over the group columns (no group columns: one cell, code 0).

    Refuses missing, infinite or ungroupable (list, dict…) group values.
    """
    n = len(frame)
    if not groups:
        return CellCodes(codes=np.zeros(n, dtype=np.int64), size=1, columns=(), uniques=None)
    combined: np.ndarray | None = None
    size = 1
    uniques: pd.Index | None = None
    for col in groups:
        series = frame[col]
        if series.hasnans:
            raise _missing_group(col)
        if (
            pd.api.types.is_float_dtype(series.dtype)
            and not np.isfinite(series.to_numpy(dtype=np.float64)).all()
        ):
            raise ReleaseRefused(
                f"group column {col!r} holds infinite values; fix them in the algorithm"
            )
        try:
            codes, uniq = pd.factorize(series, sort=False, use_na_sentinel=True)
        except TypeError:
            raise ReleaseRefused(
                f"group column {col!r} holds values that cannot be grouped (lists, dicts…); "
                "return scalars"
            ) from None
        if len(codes) and codes.min() < 0:
            raise _missing_group(col)
        codes = codes.astype(np.int64, copy=False)
        k = max(len(uniq), 1)
        if combined is None:
            combined, size, uniques = codes, k, pd.Index(uniq)
        else:
            uniques = None
            if size * k >= 2**62:
                combined, firsts = pd.factorize(combined, sort=False)
                combined, size = combined.astype(np.int64), len(firsts)
            combined, size = combined * k + codes, size * k
    assert combined is not None
    if size > max(n, 1):
        # Compact sparse mixed-radix codes so per-cell arrays stay small.
        combined, firsts = pd.factorize(combined, sort=False)
        combined, size = combined.astype(np.int64, copy=False), len(firsts)
    return CellCodes(codes=combined, size=size, columns=tuple(groups), uniques=uniques)


def _missing_group(col: str) -> ReleaseRefused:
    return ReleaseRefused(
        f'group column {col!r} holds missing values; fill them (e.g. with "unknown") '
        "in the algorithm"
    )
