"""Runtime guards for RestrictedPython-compiled algorithms (issue #3, layer 2).

RestrictedPython rewrites ``a.b`` into ``_getattr_(a, "b")``, ``a[b] = c``
into ``_write_(a)[b] = c``, ``import x`` into ``__import__("x")`` and so on.
This module supplies those functions:

* ``_getattr_`` consults a per-type allowlist (``_allowlist``); unknown types
  (classes, functions, modules, frames, generators ...) expose nothing.
* methods that take a function (``agg``, ``apply``, ``transform``, ``map``)
  accept only functions compiled from the bundle, facade functions, safe
  builtins and allowlisted reducer names: pandas resolves a string such as
  ``agg("eval")`` with a plain ``getattr``.
* ``_write_`` allows writes only to containers the algorithm made itself.
* ``import`` resolves to immutable facades holding vetted functions only.

A denial raises ``SandboxDenied`` (a ``BaseException``, so ``except
Exception`` does not swallow it) and is also recorded: once a rule was hit
the run ends as a policy violation whatever the algorithm does next.
"""

from __future__ import annotations

import datetime
import difflib
import itertools
import operator
import sys
import types
from collections.abc import Callable
from typing import Any

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from opal.sandbox import _allowlist as A
from opal.sandbox import _clock

__all__ = ["SandboxDenied", "JobState", "build_globals", "facades", "make_data"]


class SandboxDenied(BaseException):
    """A runtime guard refused an operation; carries a one-line message."""


class JobState:
    """What the guards need to know about the one job running in this process."""

    def __init__(
        self, *, filename: str, protected: list[Any], schema: dict[str, list[str]] | None = None
    ) -> None:
        self.filename = filename
        # the dataset's column names by table (public: the schema), for hints
        self.schema: dict[str, list[str]] = dict(schema or {})
        self.violation: str | None = None
        self.limit: str | None = None
        self.protected_ids = {id(obj) for obj in protected}
        self.algorithm_globals: dict[str, Any] = {}


_STATE = JobState(filename="algorithm.py", protected=[])


def _algorithm_line() -> int | None:
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == _STATE.filename:
            return frame.f_lineno
        frame = frame.f_back
    return None


def _deny(rule: str) -> SandboxDenied:
    line = _algorithm_line()
    where = f"{_STATE.filename}:{line}" if line is not None else _STATE.filename
    message = f"{where}: {rule}"
    if _STATE.violation is None:
        _STATE.violation = message
    return SandboxDenied(message)


# ------------------------------------------------------------------ facades


class Facade:
    """An immutable stand-in for an allowlisted module: vetted members only.

    It deliberately has no ``__name__``: ``from x import y`` falls back to
    ``sys.modules[x.__name__ + "." + y]`` when ``y`` is missing, which would
    hand out the real submodule.
    """

    __slots__ = ("_label", "_members")

    def __init__(self, label: str, members: dict[str, Any]) -> None:
        for name, value in members.items():
            if isinstance(value, types.ModuleType):
                raise TypeError(f"facade {label} may not hold module {name}")
        object.__setattr__(self, "_label", label)
        object.__setattr__(self, "_members", dict(members))

    def __getattr__(self, name: str) -> Any:
        members = object.__getattribute__(self, "_members")
        if name in members:
            return members[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _deny(f"the {self._label} facade is read-only")

    def __delattr__(self, name: str) -> None:
        raise _deny(f"the {self._label} facade is read-only")

    def __repr__(self) -> str:
        return f"<facade {self._label}>"


class Data:
    """The ``data`` argument: read-only tables by name (``data.cdr``)."""

    __slots__ = ("_tables",)
    _tables: dict[str, Any]

    def __init__(self, tables: dict[str, Any]) -> None:
        object.__setattr__(self, "_tables", dict(tables))

    def __getitem__(self, name: str) -> Any:
        tables = object.__getattribute__(self, "_tables")
        if name in tables:
            return tables[name]
        raise KeyError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _deny("the data object is read-only")

    def __repr__(self) -> str:
        return f"<data {sorted(self._tables)}>"


def make_data(tables: dict[str, Any]) -> Data:
    return Data(tables)


# Facade functions that parse their arguments as dates: always checked. Any
# other facade function or library method is checked when a datetime array,
# scalar or dtype takes part in the call (a string meeting one may be parsed).
# (Grouper parses its `origin`; the two classes become plain functions, so
# isinstance() with them is not available to algorithms.)
_DATE_PARSERS = frozenset(
    {"to_datetime", "Timestamp", "date_range", "period_range", "interval_range", "datetime64",
     "Grouper", "DatetimeIndex"}
)


def _has_datetime_spec(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return any(_clock.is_datetime_spec(v) for v in itertools.chain(args, kwargs.values()))


def _touches_datetimes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for value in itertools.chain(args, kwargs.values()):
        if _clock.involves_datetimes(value) or _clock.is_datetime_spec(value):
            return True
        if isinstance(value, (list, tuple)) and any(_clock.involves_datetimes(v) for v in value[:64]):
            return True
    return False


def _clock_checked(
    label: str, fn: Callable[..., Any], *, always: bool = False, arrays: bool = True
) -> Callable[..., Any]:
    """``fn`` refusing 'now'/'today' wherever a string may become a datetime.

    ``arrays=False`` (pandas functions that do not parse by themselves):
    arrays are left to the wrapped pandas parsers unless a datetime dtype is
    asked for, so concat/merge of large frames are not scanned.
    """

    def checked(*args: Any, **kwargs: Any) -> Any:
        if always or _has_datetime_spec(args, kwargs):
            _clock.refuse(label, args, kwargs)
        elif _touches_datetimes(args, kwargs):
            _clock.refuse(label, args, kwargs, arrays=arrays)
        return fn(*args, **kwargs)

    checked.__name__ = label.rsplit(".", 1)[-1].rstrip("()")
    return checked


def _clock_checked_method(obj: Any, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """A method of a pandas/numpy object, refusing 'now'/'today' when the
    object, an argument or a target dtype is datetime-like (``ts.fillna("now")``,
    ``s.astype("datetime64[s]")``, ``a.searchsorted("now")``). numpy converts
    arrays in C, so an ndarray's arguments are scanned whole; a pandas
    object's array arguments meet the wrapped parsers."""
    label = f"{name}()"
    self_dates = _clock.involves_datetimes(obj) or _clock.involves_datetimes(getattr(obj, "obj", None))
    arrays = isinstance(obj, _TYPES["ndarray"])

    def checked(*args: Any, **kwargs: Any) -> Any:
        if _has_datetime_spec(args, kwargs):
            # a conversion: the object itself is what becomes datetimes
            _clock.refuse(label, obj, args, kwargs)
        elif self_dates or _touches_datetimes(args, kwargs):
            _clock.refuse(label, args, kwargs, arrays=arrays)
        return method(*args, **kwargs)

    checked.__name__ = name
    return checked


def _aggfunc_checked(label: str, fn: Callable[..., Any], position: int) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        if "aggfunc" in kwargs:
            _vet_function(kwargs["aggfunc"], label)
        if len(args) > position:
            _vet_function(args[position], label)
        return fn(*args, **kwargs)

    checked.__name__ = label.rsplit(".", 1)[-1].rstrip("()")
    return checked


def _clock_facade(module: str, name: str, value: Any) -> Any:
    """Facade members that can turn a string into a datetime, clock-checked.
    Classes stay classes (``isinstance`` works) except the two that parse a
    string themselves; ufuncs have no string-to-datetime loop."""
    import numpy as np

    if name in _DATE_PARSERS:
        return _clock_checked(f"{module}.{name}()", value, always=True)
    if isinstance(value, (type, np.ufunc)) or not callable(value):
        return value
    return _clock_checked(f"{module}.{name}()", value, arrays=module == "numpy")


_FACADES: dict[str, Facade] = {}
_VETTED_IDS: set[int] = set()


def facades() -> dict[str, Facade]:
    """Build (once per process) the facades for the allowlisted imports.

    The ``opal`` facade holds the vetted helper API (``opal.helpers``).
    """
    from opal import helpers

    if _FACADES:
        return _FACADES
    import math
    import statistics

    import numpy as np
    import pandas as pd

    _clock.install(_deny)
    numpy_members = {name: _clock_facade("numpy", name, getattr(np, name)) for name in A.NUMPY_FACADE}
    pandas_members = {name: _clock_facade("pandas", name, getattr(pd, name)) for name in A.PANDAS_FACADE}
    pandas_members["pivot_table"] = _aggfunc_checked("pivot_table", pd.pivot_table, 4)
    pandas_members["crosstab"] = _aggfunc_checked("crosstab", pd.crosstab, 5)

    built = {
        "numpy": Facade("numpy", numpy_members),
        "pandas": Facade("pandas", pandas_members),
        "math": Facade("math", {n: getattr(math, n) for n in A.MATH_FACADE}),
        "statistics": Facade(
            "statistics", {n: getattr(statistics, n) for n in A.STATISTICS_FACADE}
        ),
        "opal": Facade("opal", {n: getattr(helpers, n) for n in A.OPAL_FACADE}),
    }
    for facade in built.values():
        for value in object.__getattribute__(facade, "_members").values():
            if callable(value):
                _VETTED_IDS.add(id(value))
    _FACADES.update(built)
    return _FACADES


# ------------------------------------------------------------ attribute rules

_REGISTRY: dict[type, frozenset[str]] = {}
_BY_TYPE: dict[type, frozenset[str] | None] = {}
_TYPES: dict[str, Any] = {}


def _build_registry() -> None:
    import numpy as np
    import pandas as pd
    from pandas.api import typing as pdt
    from pandas.api.extensions import ExtensionDtype
    from pandas.core.arrays.categorical import CategoricalAccessor
    from pandas.core.indexes.accessors import (
        DatetimeProperties,
        PeriodProperties,
        TimedeltaProperties,
    )
    from pandas.core.indexing import _AtIndexer, _iAtIndexer, _iLocIndexer, _LocIndexer
    from pandas.core.strings.accessor import StringMethods
    from pandas.core.window.rolling import BaseWindow

    empty: frozenset[str] = frozenset()
    _REGISTRY.update(
        {
            pd.DataFrame: A.DATAFRAME_ATTRS,
            pd.Series: A.SERIES_ATTRS,
            pd.Index: A.INDEX_ATTRS,
            pdt.DataFrameGroupBy: A.GROUPBY_ATTRS,
            pdt.SeriesGroupBy: A.GROUPBY_ATTRS,
            pdt.Resampler: A.WINDOW_ATTRS | A.GROUPBY_ATTRS,
            BaseWindow: A.WINDOW_ATTRS,
            StringMethods: A.STRING_METHODS_ATTRS,
            DatetimeProperties: A.DATETIME_PROPERTIES_ATTRS,
            TimedeltaProperties: A.DATETIME_PROPERTIES_ATTRS,
            PeriodProperties: A.DATETIME_PROPERTIES_ATTRS,
            CategoricalAccessor: A.CATEGORICAL_ACCESSOR_ATTRS,
            pd.Timestamp: A.TIMESTAMP_ATTRS,
            pdt.NaTType: A.TIMESTAMP_ATTRS,
            pd.Timedelta: A.TIMEDELTA_ATTRS,
            np.ndarray: A.NDARRAY_ATTRS,
            np.generic: A.NUMPY_SCALAR_ATTRS,
            np.dtype: A.DTYPE_ATTRS,
            ExtensionDtype: A.DTYPE_ATTRS,
            np.ufunc: frozenset({"reduce", "accumulate", "outer"}),
            _LocIndexer: empty,
            _iLocIndexer: empty,
            _AtIndexer: empty,
            _iAtIndexer: empty,
            str: A.STR_ATTRS,
            bytes: A.BYTES_ATTRS,
            dict: A.DICT_ATTRS,
            list: A.LIST_ATTRS,
            tuple: A.TUPLE_ATTRS,
            set: A.SET_ATTRS,
            frozenset: A.SET_ATTRS,
            int: A.INT_ATTRS,
            float: A.FLOAT_ATTRS,
            datetime.date: A.DATE_ATTRS,
            datetime.timedelta: A.TIMEDELTA_PY_ATTRS,
            BaseException: A.EXCEPTION_ATTRS,
        }
    )
    _TYPES.update(
        DataFrame=pd.DataFrame,
        Series=pd.Series,
        DataFrameGroupBy=pdt.DataFrameGroupBy,
        GroupByBase=(pdt.DataFrameGroupBy, pdt.SeriesGroupBy, pdt.Resampler, BaseWindow),
        NamedAgg=pd.NamedAgg,
        indexers=(_LocIndexer, _iLocIndexer, _AtIndexer, _iAtIndexer),
        ndarray=np.ndarray,
        library_object=lambda obj: type(obj).__module__.split(".", 1)[0] in ("pandas", "numpy"),
    )


def _allowed_for(tp: type) -> frozenset[str] | None:
    try:
        return _BY_TYPE[tp]
    except KeyError:
        pass
    if not _REGISTRY:
        _build_registry()
    found: frozenset[str] | None = None
    fields = getattr(tp, "_fields", None) if issubclass(tp, tuple) else None
    if isinstance(fields, tuple):
        # namedtuple rows from itertuples(): their fields are column names
        found = frozenset(f for f in fields if isinstance(f, str)) | A.TUPLE_ATTRS
    else:
        for base in tp.__mro__:
            if base in _REGISTRY:
                found = _REGISTRY[base]
                break
    _BY_TYPE[tp] = found
    return found


def _type_label(obj: Any) -> str:
    if isinstance(obj, type):
        return "a class"
    if type(obj) is Facade:
        return f"the {object.__getattribute__(obj, '_label')} facade"
    if type(obj) is Data:
        return "the data object"
    return type(obj).__name__


def guarded_getattr(obj: Any, name: str) -> Any:
    if type(name) is not str:
        raise _deny("attribute names must be literal strings")
    tp = type(obj)
    if name.startswith("_") or (name in A.ALWAYS_DENIED and tp is not Facade):
        raise _deny(f"attribute '{name}' of {_type_label(obj)} is not allowed")
    if tp is Facade:
        members = object.__getattribute__(obj, "_members")
        if name in members:
            return members[name]
        label = object.__getattribute__(obj, "_label")
        raise _deny(f"'{name}' is not an allowed member of the {label} facade")
    if tp is Data:
        tables = object.__getattribute__(obj, "_tables")
        if name in tables:
            return tables[name]
        raise AttributeError(f"data has no table '{name}'")
    if isinstance(obj, type):
        # Classes expose nothing (no DataFrame.eval(df, ...), no
        # Timestamp.now()), except str's own methods for str.lower-style mappers.
        if obj is str and name in A.STR_ATTRS:
            return getattr(str, name)
        raise _deny(f"attribute '{name}' of a class is not allowed")
    allowed = _allowed_for(tp)
    if allowed is None:
        raise _deny(f"attribute '{name}' of {tp.__name__} is not allowed")
    if name in allowed:
        value = getattr(obj, name)
    elif isinstance(obj, _TYPES["DataFrame"]) and _has_column(obj, name):
        return obj[name]
    elif isinstance(obj, _TYPES["DataFrameGroupBy"]) and _has_column(obj.obj, name):
        return obj[name]
    else:
        hint = column_hint(name) if isinstance(obj, (_TYPES["DataFrame"], _TYPES["DataFrameGroupBy"])) else None
        if hint is not None:
            raise _deny(f"attribute '{name}' of {tp.__name__} is not allowed: {hint}")
        raise _deny(f"attribute '{name}' of {tp.__name__} is not allowed")
    if not callable(value) or isinstance(value, _TYPES["indexers"]):
        return value
    if name in A.CALLABLE_TAKING:
        value = _vetting_method(obj, name, value)
    elif id(obj) in _STATE.protected_ids:
        value = _read_only_method(tp.__name__, name, value)
    if _TYPES["library_object"](obj):
        return _clock_checked_method(obj, name, value)
    return value


def column_hint(name: str, schema: dict[str, list[str]] | None = None) -> str | None:
    """'column X is not in data.T; did you mean Y?' for a name from the source
    that is close to a column of the dataset's schema, else None. Only the
    schema is searched, never a frame the algorithm built (a pivot's columns
    are data values)."""
    tables = _STATE.schema if schema is None else schema
    if not isinstance(name, str) or any(name in columns for columns in tables.values()):
        return None
    for table, columns in tables.items():
        match = difflib.get_close_matches(name, [c for c in columns if isinstance(c, str)], n=1, cutoff=0.6)
        if match:
            return f"column '{name}' is not in data.{table}; did you mean {match[0]}?"
    return None


def _has_column(frame: Any, name: str) -> bool:
    try:
        return name in frame.columns
    except TypeError:
        return False


def _read_only_method(type_name: str, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    if name in A.IN_PLACE_METHODS:

        def refused(*args: Any, **kwargs: Any) -> Any:
            raise _deny(f"{type_name}.{name}() would modify the read-only input data")

        return refused

    def checked(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("inplace"):
            raise _deny(f"{type_name}.{name}(inplace=True) would modify the read-only input data")
        return method(*args, **kwargs)

    return checked


def _vet_function(value: Any, where: str) -> None:
    """Accept only bundle functions, facade functions, safe builtins, reducer names."""
    if isinstance(value, str):
        if value in A.REDUCER_NAMES:
            return
        # The rejected name is not echoed: it may have been computed from data.
        raise _deny(
            f"{where}() was given a name that is not an allowed reducer "
            "(sum, mean, count, nunique, ...); pass a reducer name or a function"
        )
    if isinstance(value, (list, tuple)):
        for item in value:
            _vet_function(item, where)
        return
    if isinstance(value, dict):
        for item in value.values():
            _vet_function(item, where)
        return
    if isinstance(value, _TYPES["NamedAgg"]):
        _vet_function(value.aggfunc, where)
        return
    if isinstance(value, types.FunctionType) and value.__globals__ is _STATE.algorithm_globals:
        return
    if id(value) in _VETTED_IDS:
        return
    if isinstance(value, types.MethodDescriptorType) and value.__objclass__ is str:
        return
    raise _deny(
        f"{where}() accepts only functions defined in {_STATE.filename}, "
        f"numpy/pandas/math/statistics functions or reducer names, not {_type_label(value)}"
    )


# Options of agg/aggregate/transform/apply that are not functions: each value
# must have the option's own plain type. Any other keyword is a named
# aggregation or an argument forwarded to the function, and pandas resolves a
# string or (column, name) tuple there with getattr: those are vetted as
# functions. (DataFrame.agg has no `numeric_only` or `engine_kwargs`
# parameter, so pandas reads `numeric_only=("c", "__reduce__")` as a named
# aggregation: names alone decide nothing.)
_OPTION_TYPES: dict[str, Callable[[Any], bool]] = {
    "axis": lambda v: v in (0, 1, "index", "columns", "rows"),
    "engine": lambda v: v in (None, "python", "cython"),
    "engine_kwargs": lambda v: v is None,
    "numeric_only": lambda v: type(v) is bool,
    "raw": lambda v: type(v) is bool,
    "include_groups": lambda v: type(v) is bool,
    "dropna": lambda v: type(v) is bool,
    "convert_dtype": lambda v: type(v) is bool,
    "result_type": lambda v: v in (None, "expand", "reduce", "broadcast"),
    "by_row": lambda v: v in (False, "compat"),
    "na_action": lambda v: v in (None, "ignore"),
    "args": lambda v: type(v) is tuple and all(_plain_value(x) for x in v),
}
_FUNCTION_ARGUMENT = frozenset({"func", "arg", "aggfunc"})


def _plain_value(value: Any) -> bool:
    return value is None or type(value) in (bool, int, float)


def _vet_forwarded(value: Any, name: str) -> None:
    """An argument pandas hands to the function the algorithm named (the
    function is vetted): values pass, a callable is vetted, and a string is
    refused only if it could never be an option value (``rank(method="dense")``
    is fine; ``"__reduce__"`` is not)."""
    if isinstance(value, str):
        if value.startswith("_") or value in A.ALWAYS_DENIED:
            raise _deny(f"{name}() was given a name that is not allowed as an argument")
        return
    if isinstance(value, (tuple, list)):
        for item in value:
            _vet_forwarded(item, name)
        return
    if callable(value):
        _vet_function(value, name)


def _vet_keywords(name: str, kwargs: dict[str, Any], *, forwarded: bool) -> None:
    """Check every keyword: options by type; the rest are forwarded to the
    named function (``forwarded``) or, when no function was named, pandas'
    named aggregations, whose values it resolves as names."""
    for key, value in kwargs.items():
        check = _OPTION_TYPES.get(key)
        if check is not None:
            if not check(value):
                raise _deny(f"{name}({key}=...) got a value that is not an allowed {key} option")
            continue
        if forwarded:
            _vet_forwarded(value, name)
            continue
        if _plain_value(value) or (
            isinstance(value, (tuple, list)) and all(_plain_value(x) for x in value)
        ):
            continue  # numbers or flags
        if isinstance(value, tuple) and len(value) == 2:
            _vet_function(value[1], name)  # named aggregation (column, function)
        else:
            _vet_function(value, name)


def _vetting_method(obj: Any, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    is_grouped = isinstance(obj, _TYPES["GroupByBase"])
    if name == "filter" and not is_grouped:
        return _maybe_read_only(obj, name, method)

    def checked(*args: Any, **kwargs: Any) -> Any:
        if id(obj) in _STATE.protected_ids and kwargs.get("inplace"):
            raise _deny(f"{name}(inplace=True) would modify the read-only input data")
        if name == "pivot_table":
            if "aggfunc" in kwargs:
                _vet_function(kwargs["aggfunc"], name)
            if len(args) > 3:
                _vet_function(args[3], name)
            if kwargs.get("engine") not in (None, "python", "cython"):
                raise _deny(f"{name}(engine=...) is not allowed")
        elif name == "combine":
            if len(args) > 1:
                _vet_function(args[1], name)
            if "func" in kwargs:
                _vet_function(kwargs["func"], name)
        elif name in ("map", "applymap"):
            first = args[0] if args else kwargs.get("arg", kwargs.get("func", kwargs.get("mapper")))
            if not isinstance(first, (dict, _TYPES["Series"])) or isinstance(first, str):
                if isinstance(first, str):
                    raise _deny(f"{name}() does not accept a name; pass a function or mapping")
                _vet_function(first, name)
            _vet_keywords(name, {k: v for k, v in kwargs.items() if k not in ("arg", "func", "mapper")},
                          forwarded=True)
        else:
            if args:
                _vet_function(args[0], name)
            for value in args[1:]:
                _vet_forwarded(value, name)
            named = [key for key in _FUNCTION_ARGUMENT & kwargs.keys() if kwargs[key] is not None]
            for key in named:
                _vet_function(kwargs[key], name)
            # no function named: pandas reads the keywords as named aggregations
            _vet_keywords(name, {k: v for k, v in kwargs.items() if k not in _FUNCTION_ARGUMENT},
                          forwarded=bool(args) or bool(named))
        return method(*args, **kwargs)

    return checked


def _maybe_read_only(obj: Any, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    if id(obj) in _STATE.protected_ids:
        return _read_only_method(type(obj).__name__, name, method)
    return method


# ------------------------------------------------------------------- writes


class _WriteProxy:
    """What ``_write_`` hands back: item writes pass, attribute writes are vetted."""

    __slots__ = ("_target", "_attrs")
    _target: Any
    _attrs: frozenset[str]

    def __init__(self, target: Any, attrs: frozenset[str]) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_attrs", attrs)

    def __setitem__(self, key: Any, value: Any) -> None:
        target = self._target
        if _clock.holds_clock_word(value) and (
            _clock.involves_datetimes(target) or _clock.involves_datetimes(getattr(target, "obj", None))
        ):
            # a[0] = "now" on a datetime array parses the clock
            raise _deny("assigning the word now or today to datetimes reads the clock, which is not allowed")
        target[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._target[key]

    def __setattr__(self, name: str, value: Any) -> None:
        target = self._target
        if name in self._attrs or (
            isinstance(target, _TYPES["DataFrame"]) and _has_column(target, name)
        ):
            setattr(target, name, value)
            return
        raise _deny(f"setting attribute '{name}' of {type(target).__name__} is not allowed")

    def __delattr__(self, name: str) -> None:
        raise _deny(f"deleting attribute '{name}' is not allowed")


_FRAME_SETTABLE = frozenset({"columns", "index", "name", "names"})


def guarded_write(obj: Any) -> Any:
    if id(obj) in _STATE.protected_ids:
        raise _deny(f"{type(obj).__name__} is read-only input data and cannot be modified")
    tp = type(obj)
    if tp in (list, dict, set):
        return obj
    if not _REGISTRY:
        _build_registry()
    if isinstance(obj, (_TYPES["DataFrame"], _TYPES["Series"])):
        return _WriteProxy(obj, _FRAME_SETTABLE)
    if isinstance(obj, _TYPES["indexers"]):
        if id(obj.obj) in _STATE.protected_ids:
            raise _deny("the input data is read-only and cannot be modified")
        return _WriteProxy(obj, frozenset())
    if isinstance(obj, _TYPES["ndarray"]):
        return _WriteProxy(obj, frozenset())
    raise _deny(
        f"cannot modify {_type_label(obj)}: only containers the algorithm created may be modified"
    )


# ------------------------------------------------------------------ builtins


def _guarded_import(
    name: str,
    globals: Any = None,
    locals: Any = None,
    fromlist: Any = (),
    level: int = 0,
) -> Any:
    table = facades()
    if level != 0 or name not in table:
        raise _deny(f"import of '{name}' is not allowed")
    facade = table[name]
    for member in fromlist or ():
        if member not in object.__getattribute__(facade, "_members"):
            raise _deny(f"'{member}' is not an allowed member of the {name} facade")
    return facade


class _DiscardPrint:
    """print() is accepted and discarded: stdout is not an output channel."""

    __slots__ = ()

    def __init__(self, _getattr_: Any = None) -> None:
        pass

    def _call_print(self, *objects: Any, **kwargs: Any) -> None:
        return None

    def __call__(self) -> str:
        return ""


_INPLACE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "&=": operator.iand,
    "|=": operator.ior,
    "^=": operator.ixor,
    "@=": operator.imatmul,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    try:
        fn = _INPLACE_OPS[op]
    except KeyError:
        raise _deny(f"operator {op} is not allowed") from None
    if id(x) in _STATE.protected_ids:
        raise _deny("the input data is read-only and cannot be modified")
    return fn(x, y)


def _caught(in_finally: bool) -> None:
    """First statement of every except/finally block of the algorithm.

    Resource limits stick: once a MemoryError was raised the run ends as a
    limit hit even if the algorithm catches it (or `finally: return`s over
    it). A denial caught by a bare ``except:`` is raised again.
    """
    exc = sys.exc_info()[1]
    if isinstance(exc, MemoryError):
        line = _algorithm_line()
        where = f"{_STATE.filename}:{line}" if line is not None else _STATE.filename
        if _STATE.limit is None:
            _STATE.limit = f"{where}: memory limit (memory_bytes) exceeded"
        if not in_finally:
            raise exc
    if isinstance(exc, SandboxDenied) and not in_finally:
        raise exc


def _guarded_getitem(obj: Any, key: Any) -> Any:
    # df.set_index("timestamp").loc["now"] parses the key against a DatetimeIndex
    if isinstance(key, (str, bytes, slice, tuple)) and _clock.holds_clock_word(key):
        target = getattr(obj, "obj", obj)
        index = getattr(target, "index", None)
        if _clock.involves_datetimes(index) or _clock.involves_datetimes(target):
            raise _deny("indexing datetimes with the word now or today reads the clock, which is not allowed")
    return obj[key]


def _apply(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def _safe_builtins() -> dict[str, Any]:
    import builtins

    table = {name: getattr(builtins, name) for name in A.SAFE_BUILTINS}
    for value in table.values():
        if callable(value):
            _VETTED_IDS.add(id(value))
    table["__import__"] = _guarded_import
    return table


def build_globals(
    *, filename: str, protected: list[Any], schema: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """Fresh module globals for one job; resets the per-process guard state.

    ``schema`` (table -> column names) lets a denial suggest a column.
    """
    global _STATE
    facades()
    if not _REGISTRY:
        _build_registry()
    _STATE = JobState(filename=filename, protected=protected, schema=schema)
    glb: dict[str, Any] = {
        "__builtins__": _safe_builtins(),
        "__name__": "algorithm",
        "_getattr_": guarded_getattr,
        "_getitem_": _guarded_getitem,
        "_caught_": _caught,
        "_getiter_": iter,
        "_write_": guarded_write,
        "_print_": _DiscardPrint,
        "_apply_": _apply,
        "_inplacevar_": _inplacevar,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
    }
    _STATE.algorithm_globals = glb
    return glb


def violation() -> str | None:
    """The first rule the current job hit, if any."""
    return _STATE.violation


def limit_hit() -> str | None:
    """The resource limit the current job hit, even if it caught the error."""
    return _STATE.limit
