"""The ``opal`` helper API an algorithm may import (``import opal``).

Inside the sandbox ``import opal`` resolves to a read-only facade holding
exactly these functions (vetted platform code, run on the algorithm's
behalf); outside it, running an algorithm directly, the same functions come
from this module. They filter rows, pick one value per unit, or reduce rows
per key; with the unit among the keys their output is still per-unit
contributions.

``distinct`` and ``sum_by`` are what most contributions are: the distinct
(unit, group) rows, or a value summed per (unit, group). They give exactly
what ``drop_duplicates`` and ``groupby(...).sum()`` give, sorted by the key
columns, and are several times faster when every key is an integer or a
categorical column (``categorical = [...]`` in opal.toml): the keys are
packed into one integer per row, so no text is hashed (docs/design.md).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "require_columns",
    "between_days",
    "night_hours",
    "night_events",
    "modal_region",
    "distinct",
    "sum_by",
    "NIGHT_START_HOUR",
    "NIGHT_END_HOUR",
]

NIGHT_START_HOUR = 20
NIGHT_END_HOUR = 7


def require_columns(frame: Any, *columns: str) -> None:
    """Raise KeyError if any of ``columns`` is missing (message names no data)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError("required column missing")


def between_days(frame: Any, params: dict[str, Any], column: str = "day") -> Any:
    """Rows whose ``column`` lies within params start_day..end_day (inclusive)."""
    return frame[frame[column].between(params["start_day"], params["end_day"])]


def night_hours(params: dict[str, Any]) -> tuple[int, int]:
    """(night start hour, night end hour) from params ``night_start_hour`` /
    ``night_end_hour``, default 20 and 7 (UTC; start inclusive, end exclusive)."""
    night_start = params.get("night_start_hour", NIGHT_START_HOUR)
    night_end = params.get("night_end_hour", NIGHT_END_HOUR)
    if night_start == night_end:
        raise ValueError("night_start_hour and night_end_hour must differ")
    return night_start, night_end


def night_events(cdr: Any, start_day: int, end_day: int, night_start: int, night_end: int) -> Any:
    """Events of days start_day..end_day whose hour is in the night
    [night_start, night_end), wrapping midnight when night_start > night_end."""
    window = cdr[cdr["day"].between(start_day, end_day)]
    hour = window["timestamp"].dt.hour
    if night_start > night_end:
        at_night = (hour >= night_start) | (hour < night_end)
    else:
        at_night = (hour >= night_start) & (hour < night_end)
    return window[at_night]


def modal_region(events: Any, keys: list[str]) -> Any:
    """Per ``keys`` (e.g. ["msisdn"] or ["msisdn", "day"]), the region with the
    most events; ties go to the alphabetically first region. Columns: keys + region."""
    counts = events.groupby(keys + ["region"]).size().reset_index(name="events")
    order = keys + ["events", "region"]
    ascending = [True] * len(keys) + [False, True]
    counts = counts.sort_values(order, ascending=ascending)
    return counts.drop_duplicates(keys)[keys + ["region"]]


# A presence bitmap (one byte per possible key) is used while the key space
# is at most this many times the rows, or below _BITMAP_FLOOR; past
# _BITMAP_CAP keys it is never used (the child's memory limit).
_BITMAP_PER_ROW = 8
_BITMAP_FLOOR = 1 << 22
_BITMAP_CAP = 1 << 27
# Integer sums go through float64 (np.bincount): exact while every partial
# sum stays below 2**53, which is checked before.
_EXACT_FLOAT = 2**53


def _key_part(series: Any) -> tuple[Any, int, Any] | None:
    """(codes in [0, span), span, decode) for one key column, or None when the
    column cannot be packed (text, floats, missing values: pandas does it)."""
    import numpy as np
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy()
        if len(codes) and codes.min() < 0:  # a missing value
            return None
        categories = dtype.categories
        return (
            codes.astype(np.int64),
            max(len(categories), 1),
            lambda c: pd.Categorical.from_codes(c, dtype=dtype),
        )
    if dtype == np.bool_:
        return series.to_numpy().astype(np.int64), 2, lambda c: c.astype(bool)
    if isinstance(dtype, np.dtype) and dtype.kind in "iu" and dtype.itemsize <= 8:
        values = series.to_numpy()
        if dtype.kind == "u" and len(values) and int(values.max()) >= 2**63:
            return None
        values = values.astype(np.int64, copy=False)
        low = int(values.min())
        span = int(values.max()) - low + 1
        if span > max(_BITMAP_PER_ROW * len(values), _BITMAP_FLOOR):
            # sparse ids (phone numbers): their sorted dictionary keeps the key space small
            codes, uniques = pd.factorize(values, sort=True)
            return codes.astype(np.int64, copy=False), max(len(uniques), 1), lambda c: uniques.take(c).astype(dtype)
        return values - low, span, lambda c: (c + low).astype(dtype)
    return None


def _packed(frame: Any, columns: list[str]) -> tuple[Any, list[tuple[int, Any]], int] | None:
    """One int64 key per row for ``columns`` (mixed radix, first column most
    significant, so sorting keys sorts the rows by the columns), the spans
    and decoders, and the key space; None when a column cannot be packed or
    the space does not fit in 62 bits."""
    import numpy as np

    if not len(frame):
        return None
    key = np.zeros(len(frame), dtype=np.int64)
    parts: list[tuple[int, Any]] = []
    space = 1
    for column in columns:
        part = _key_part(frame[column])
        if part is None:
            return None
        codes, span, decode = part
        space *= span
        if space >= 2**62:
            return None
        key *= span
        key += codes
        parts.append((span, decode))
    return key, parts, space


def _unpacked(keys: Any, columns: list[str], parts: list[tuple[int, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rest = keys
    for column, (span, decode) in zip(reversed(columns), reversed(parts), strict=True):
        out[column] = decode(rest % span)
        rest = rest // span
    return {column: out[column] for column in columns}


def _present(key: Any, space: int) -> Any | None:
    """The presence bitmap of ``key`` over [0, space), or None when it would be too large."""
    import numpy as np

    if space > _BITMAP_CAP or space > max(_BITMAP_PER_ROW * len(key), _BITMAP_FLOOR):
        return None
    seen = np.zeros(space, dtype=bool)
    seen[key] = True
    return seen


def distinct(frame: Any, columns: list[str]) -> Any:
    """The distinct rows of ``frame[columns]``, sorted by those columns, with a
    fresh index: ``frame[columns].drop_duplicates()`` in sorted order."""
    import numpy as np
    import pandas as pd

    columns = list(columns)
    packed = _packed(frame, columns)
    if packed is None:
        out = frame[columns].drop_duplicates()
        if len(out):
            out = out.sort_values(columns, kind="stable")
        return out.reset_index(drop=True)
    key, parts, space = packed
    seen = _present(key, space)
    keys = np.flatnonzero(seen) if seen is not None else np.sort(pd.unique(key))
    return pd.DataFrame(_unpacked(keys, columns, parts))


def sum_by(frame: Any, keys: list[str], value: str) -> Any:
    """``value`` summed per distinct ``keys``, sorted by the keys, with a fresh
    index: ``frame.groupby(keys)[value].sum().reset_index()``."""
    import numpy as np
    import pandas as pd

    keys = list(keys)
    values = frame[value]
    packed = None
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "iub":
        packed = _packed(frame, keys)
    if packed is not None:
        raw = values.to_numpy()
        largest = max(abs(int(raw.min())), abs(int(raw.max())))
        if largest * len(raw) >= _EXACT_FLOAT:
            packed = None
        numbers = raw.astype(np.int64)
    if packed is None:
        return frame.groupby(keys)[value].sum().reset_index()
    key, parts, space = packed
    seen = _present(key, space)
    if seen is not None:
        present = np.flatnonzero(seen)
        rank = np.zeros(space, dtype=np.int64 if len(present) >= 2**31 else np.int32)
        rank[present] = np.arange(len(present), dtype=rank.dtype)
        dense = rank[key]
    else:
        dense, present = pd.factorize(key, sort=True)
    sums = np.bincount(dense, weights=numbers, minlength=len(present)).astype(np.int64)
    if values.dtype.kind in "iu" and values.dtype != np.int64:  # pandas keeps the value's own type
        info = np.iinfo(values.dtype)
        if len(sums) and (sums.min() < info.min or sums.max() > info.max):
            return frame.groupby(keys)[value].sum().reset_index()
        sums = sums.astype(values.dtype)
    out = _unpacked(present, keys, parts)
    out[value] = sums
    return pd.DataFrame(out)
