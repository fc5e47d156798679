"""The contributions contract: what an algorithm may hand to the release gate.

An algorithm returns ``[unit, group columns…, (value)]``. Before anything is
aggregated the gate checks that table against the bundle's ``[privacy]``
declaration. A table that breaks the layout is refused (``ReleaseRefused``);
the worker then releases over no contributions. Every message names declared
columns and the rule, never a value or a column name chosen by the algorithm
(a column can be named after private rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from opal.errors import ReleaseRefused
from opal.release.domains import Label
from opal.release.policy import PrivacySpec

__all__ = [
    "KnownUnits",
    "Layout",
    "UnitKeys",
    "UnitSet",
    "check_finite_values",
    "check_layout",
    "declared_columns",
    "domain_codes",
    "domain_keys",
    "output_column",
    "unit_keys",
    "unit_membership",
    "unknown_units_error",
]


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Which column of the contributions plays which part."""

    unit: str
    groups: tuple[str, ...]
    value: str | None


def declared_columns(privacy: PrivacySpec) -> tuple[str, ...]:
    """The exact columns of the contributions: unit, declared groups, value
    (sum/mean). The sandbox checks the table against them while reading it
    (``Runtime.run``)."""
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
    if len(set(columns)) != len(columns):
        raise ReleaseRefused(
            "contributions have duplicate column names; give every column a distinct name"
        )
    if privacy.unit not in columns:
        raise ReleaseRefused(
            f"contributions have no privacy-unit column {privacy.unit!r} (declared as "
            "[privacy] unit); return the unit column the algorithm was given"
        )
    value: str | None = None
    if privacy.aggregation != "count":
        value = privacy.value_column
        if value not in columns:
            raise ReleaseRefused(
                f"contributions have no value column {value!r}, required for aggregation "
                f"{privacy.aggregation!r}; return it, or set [privacy] value_column"
            )
    allowed = [privacy.unit, *privacy.groups, *([value] if value else [])]
    undeclared = [c for c in columns if c not in allowed]
    if undeclared:
        raise ReleaseRefused(
            f"contributions have {len(undeclared)} undeclared column(s); allowed: "
            + ", ".join(repr(c) for c in allowed)
            + "; drop the others or declare them in [privacy.groups]"
        )
    missing = [g for g in privacy.groups if g not in columns]
    if missing:
        raise ReleaseRefused(
            f"contributions lack declared group column(s) {', '.join(map(repr, missing))}; "
            "return them or fix [privacy.groups]"
        )
    if value is not None:
        dtype = contributions[value].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            raise ReleaseRefused(
                f"value column {value!r} must be numeric, found dtype {dtype}; "
                "convert it in the algorithm"
            )
    return Layout(unit=privacy.unit, groups=tuple(privacy.groups), value=value)


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


class UnitSet(Protocol):
    """The privacy units a run may name: which of ``values`` belong."""

    def contains(self, values: pd.Index) -> np.ndarray: ...


@dataclass(frozen=True)
class KnownUnits:
    """A ``UnitSet`` over explicit ids (library use and tests; a worker run
    checks the run's pseudonyms, ``opal.sandbox.pseudonyms``)."""

    ids: object

    def contains(self, values: pd.Index) -> np.ndarray:
        ids = self.ids
        known = ids if isinstance(ids, (pd.Series, pd.Index)) else pd.Index(np.asarray(ids))
        try:
            return np.asarray(values.isin(known), dtype=bool)
        except TypeError:
            return np.zeros(len(values), dtype=bool)


def unit_membership(values: pd.Index, known: UnitSet | object) -> np.ndarray:
    """Boolean mask: which of ``values`` are units of ``known``."""
    contains = getattr(known, "contains", None)
    if not callable(contains):
        contains = KnownUnits(known).contains
    return np.asarray(contains(values), dtype=bool)


def unknown_units_error(column: str) -> ReleaseRefused:
    # invented units: an algorithm that makes up unit ids could split one
    # person's rows over many ids and slip past the contribution bound.
    return ReleaseRefused(
        f"privacy-unit column {column!r} holds values that are not units of this run; "
        f"return the {column!r} values the algorithm was given, unchanged"
    )


def domain_codes(
    frame: pd.DataFrame, groups: tuple[str, ...], domains: Mapping[str, tuple[Label, ...]]
) -> np.ndarray:
    """Per row, the cell of the domain product its labels name (mixed radix over
    the group columns in order), or -1 when a label is missing or outside its
    column's public domain. No group columns: every row is cell 0."""
    n = len(frame)
    combined = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for col in groups:
        labels = domains[col]
        try:
            codes, uniques = pd.factorize(frame[col], sort=False, use_na_sentinel=True)
        except TypeError:  # unhashable labels (lists, dicts…) are in no domain
            bad[:] = True
            continue
        where = pd.Index(list(labels), dtype=object).get_indexer(pd.Index(uniques, dtype=object))
        where = np.append(where, -1).astype(np.int64)  # code -1 (missing) → -1
        mapped = where[codes]
        bad |= mapped < 0
        combined = combined * len(labels) + np.maximum(mapped, 0)
    combined[bad] = -1
    return combined


def domain_keys(groups: tuple[str, ...], domains: Mapping[str, tuple[Label, ...]]) -> pd.DataFrame:
    """Every cell of the domain product, one row each, in ``domain_codes`` order."""
    sizes = [len(domains[g]) for g in groups]
    total = int(np.prod(sizes, dtype=np.int64)) if sizes else 1
    codes = np.arange(total, dtype=np.int64)
    columns: dict[str, object] = {}
    stride = total
    for g, k in zip(groups, sizes, strict=True):
        stride //= k
        idx = (codes // stride) % k
        labels = domains[g]
        if all(isinstance(v, int) for v in labels):
            columns[g] = np.asarray(labels, dtype=np.int64)[idx]
        elif all(isinstance(v, str) for v in labels):
            columns[g] = pd.Series(np.asarray(labels, dtype=object)[idx], dtype="str")
        else:
            columns[g] = pd.Series(np.asarray(labels, dtype=object)[idx], dtype=object)
    return pd.DataFrame(columns, index=pd.RangeIndex(total))
