"""No clock inside the sandbox: strings that make numpy or pandas read the time.

numpy parses ``"now"`` and ``"today"`` (any letter case) into the current
time, pandas the lower-case spellings; ``"yesterday"`` or ``"now+1d"`` are
parse errors in both. A bundle that can read the date can behave while it is
reviewed and leak after a chosen day, so every route from a string to a
datetime refuses these words:

* facade functions and methods of pandas/numpy objects check their arguments
  (``_guards`` calls ``refuse_in_call``);
* the parsers pandas reaches from operators and item assignment
  (``ts < "now"``, ``s[0] = "now"``) are wrapped once, in the zygote, by
  ``install`` (trusted code, before any algorithm runs).

A refusal is a policy violation; the word is fixed text, never a data value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

__all__ = ["CLOCK_WORDS", "install", "holds_clock_word", "is_datetime_spec", "involves_datetimes"]

CLOCK_WORDS = frozenset({"now", "today"})


def _case_variants(word: str) -> list[str]:
    pairs = [(c.lower(), c.upper()) for c in word]
    return ["".join(chars) for chars in itertools.product(*pairs)]


# every spelling numpy accepts (it folds ASCII case), for exact hash lookups
_SPELLINGS: tuple[str, ...] = tuple(v for w in sorted(CLOCK_WORDS) for v in _case_variants(w))
_SPELLINGS_SET = frozenset(_SPELLINGS)
_BYTE_SPELLINGS: tuple[bytes, ...] = tuple(s.encode() for s in _SPELLINGS)
_MAX_DEPTH = 8

Deny = Callable[[str], BaseException]
_DENY: list[Deny] = []
_WRAPPED: set[int] = set()


def _is_clock_text(value: Any) -> bool:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return False
    return isinstance(value, str) and len(value) in (3, 5) and str(value) in _SPELLINGS_SET


def holds_clock_word(value: Any, depth: int = 0, *, arrays: bool = True) -> bool:
    """True if ``value`` (a scalar, container, array, Series, Index or
    DataFrame) holds a string that numpy or pandas would parse as the clock.

    ``arrays=False`` looks at scalars and Python containers only: what a
    pandas call coerces from an array goes through the parsers ``install``
    wrapped, so scanning the array up front would only cost time.
    """
    if _is_clock_text(value):
        return True
    if depth > _MAX_DEPTH or isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return False
    import numpy as np
    import pandas as pd

    if not arrays:
        if isinstance(value, dict):
            return any(holds_clock_word(k, depth + 1, arrays=False) or holds_clock_word(v, depth + 1, arrays=False)
                       for k, v in value.items())
        if isinstance(value, (list, tuple, set, frozenset)):
            return any(holds_clock_word(item, depth + 1, arrays=False) for item in value)
        if isinstance(value, slice):
            return any(holds_clock_word(p, depth + 1, arrays=False) for p in (value.start, value.stop, value.step))
        return False

    if isinstance(value, pd.DataFrame):
        return any(holds_clock_word(value.iloc[:, i], depth + 1) for i in range(value.shape[1]))
    if isinstance(value, (pd.Series, pd.Index, np.ndarray, pd.api.extensions.ExtensionArray)):
        dtype = value.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            return holds_clock_word(dtype.categories, depth + 1)
        if not (getattr(dtype, "kind", "O") in ("O", "U", "S", "T") or isinstance(dtype, pd.StringDtype)):
            return False
        try:
            if isinstance(value, (pd.Series, pd.Index)) and isinstance(dtype, pd.StringDtype):
                return bool(value.isin(_SPELLINGS).any())
            # dtype=object: no inference, which would parse dates and call back here
            flat = pd.Series(np.asarray(value, dtype=object).ravel(), dtype=object, copy=False)
            return bool(flat.isin(_SPELLINGS).any() or flat.isin(_BYTE_SPELLINGS).any())
        except (TypeError, ValueError):
            return True  # cannot be scanned: fail closed
    if isinstance(value, dict):
        return any(holds_clock_word(k, depth + 1) or holds_clock_word(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(holds_clock_word(item, depth + 1) for item in value)
    if isinstance(value, slice):
        return any(holds_clock_word(p, depth + 1) for p in (value.start, value.stop, value.step))
    return False


def is_datetime_spec(spec: Any) -> bool:
    """True if ``spec`` names or is a datetime dtype (``"datetime64[s]"``,
    ``"M8"``, a ``DatetimeTZDtype`` ...), or a dict of dtypes holding one."""
    if isinstance(spec, dict):
        return any(is_datetime_spec(v) for v in spec.values())
    import numpy as np
    import pandas as pd

    if not isinstance(spec, (str, type, np.dtype, pd.api.extensions.ExtensionDtype)):
        return False

    try:
        dtype = pd.api.types.pandas_dtype(spec)
    except (TypeError, ValueError, AttributeError, ImportError):
        return False
    return getattr(dtype, "kind", "") in ("M", "m") or isinstance(dtype, (pd.DatetimeTZDtype, pd.PeriodDtype))


def involves_datetimes(value: Any) -> bool:
    """True if ``value`` is a datetime-like array, Series, Index or frame (or a
    datetime scalar): a string meeting it may be parsed as a datetime."""
    import datetime

    import numpy as np
    import pandas as pd

    if isinstance(value, (datetime.date, np.datetime64, pd.Timestamp, pd.Period)):
        return True
    if isinstance(value, (pd.DataFrame, pd.Series)) and involves_datetimes(value.index):
        return True
    if isinstance(value, pd.MultiIndex):
        return any(is_datetime_spec(level.dtype) for level in value.levels)
    if isinstance(value, pd.DataFrame):
        return any(is_datetime_spec(d) for d in value.dtypes)
    # not getattr(value, "dtype"): on a SeriesGroupBy that property applies a
    # function to every group
    if isinstance(value, (pd.Series, pd.Index, np.ndarray, pd.api.extensions.ExtensionArray)):
        return is_datetime_spec(value.dtype)
    return False


def refuse(label: str, *values: Any, arrays: bool = True) -> None:
    """Raise the sandbox's denial if any of ``values`` holds a clock word
    (``arrays``: see ``holds_clock_word``)."""
    for value in values:
        if holds_clock_word(value, arrays=arrays):
            raise _DENY[0](f"{label} was given the word now or today; reading the clock is not allowed")


def _wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        refuse(label, args, kwargs)
        return fn(*args, **kwargs)

    checked.__name__ = getattr(fn, "__name__", label)
    checked.__doc__ = getattr(fn, "__doc__", None)
    _WRAPPED.add(id(checked))
    return checked


def _patch(owner: Any, name: str, label: str) -> None:
    current = getattr(owner, name)
    if id(current) in _WRAPPED:
        return
    setattr(owner, name, _wrap(label, current))


def install(deny: Deny) -> None:
    """Wrap the string parsers pandas reaches without a visible call
    (operators, item assignment, comparisons with arrays). Idempotent; run in
    the zygote, which is trusted, before any algorithm."""
    if not _DENY:
        _DENY.append(deny)
    from pandas._libs import tslib
    from pandas._libs.tslibs import parsing
    from pandas.core.arrays import datetimes as dt_arrays
    from pandas.core.tools import datetimes as dt_tools

    # `tslib.X` / `parsing.X` are looked up on the module at each call
    for owner, name in (
        (tslib, "array_to_datetime"),
        (tslib, "array_to_datetime_with_tz"),
        (parsing, "parse_datetime_string_with_reso"),
        (dt_tools, "array_strptime"),
        (dt_arrays.DatetimeArray, "_scalar_from_string"),
    ):
        _patch(owner, name, "datetime parsing")
