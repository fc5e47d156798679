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
import operator
import sys
import types
from collections.abc import Callable
from typing import Any

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from opal.sandbox import _allowlist as A

__all__ = ["SandboxDenied", "JobState", "build_globals", "facades", "make_data"]


class SandboxDenied(BaseException):
    """A runtime guard refused an operation; carries a one-line message."""


class JobState:
    """What the guards need to know about the one job running in this process."""

    def __init__(self, *, filename: str, protected: list[Any]) -> None:
        self.filename = filename
        self.violation: str | None = None
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


_CLOCK_WORDS = frozenset({"now", "today", "utcnow"})


def _reject_clock(label: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    values = list(args) + list(kwargs.values())
    for value in values:
        items = value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            if isinstance(item, str) and item.strip().lower() in _CLOCK_WORDS:
                raise _deny(f"{label}() was asked to read the clock, which is not allowed")


def _clock_checked(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        _reject_clock(label, args, kwargs)
        return fn(*args, **kwargs)

    checked.__name__ = label.rsplit(".", 1)[-1]
    return checked


def _aggfunc_checked(label: str, fn: Callable[..., Any], position: int) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        if "aggfunc" in kwargs:
            _vet_function(kwargs["aggfunc"], label)
        if len(args) > position:
            _vet_function(args[position], label)
        return fn(*args, **kwargs)

    checked.__name__ = label.rsplit(".", 1)[-1]
    return checked


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

    numpy_members = {name: getattr(np, name) for name in A.NUMPY_FACADE}
    numpy_members["datetime64"] = _clock_checked("numpy.datetime64", np.datetime64)

    pandas_members = {name: getattr(pd, name) for name in A.PANDAS_FACADE}
    for name in ("to_datetime", "Timestamp", "date_range", "period_range"):
        pandas_members[name] = _clock_checked(f"pandas.{name}", getattr(pd, name))
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
        raise _deny(f"attribute '{name}' of {tp.__name__} is not allowed")
    if not callable(value) or isinstance(value, _TYPES["indexers"]):
        return value
    if name in A.CALLABLE_TAKING:
        return _vetting_method(obj, name, value)
    if id(obj) in _STATE.protected_ids:
        return _read_only_method(tp.__name__, name, value)
    return value


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


_NAMED_AGG_SKIP = frozenset({"axis", "engine", "engine_kwargs", "numeric_only"})


def _vetting_method(obj: Any, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    is_grouped = isinstance(obj, _TYPES["GroupByBase"])
    if name == "filter" and not is_grouped:
        return _maybe_read_only(obj, name, method)

    def checked(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("engine") not in (None, "python", "cython"):
            raise _deny(f"{name}(engine=...) is not allowed")
        if id(obj) in _STATE.protected_ids and kwargs.get("inplace"):
            raise _deny(f"{name}(inplace=True) would modify the read-only input data")
        if name == "pivot_table":
            if "aggfunc" in kwargs:
                _vet_function(kwargs["aggfunc"], name)
            if len(args) > 3:
                _vet_function(args[3], name)
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
        else:
            if args:
                _vet_function(args[0], name)
            if "func" in kwargs:
                _vet_function(kwargs["func"], name)
            if name in ("agg", "aggregate"):
                for key, value in kwargs.items():
                    if key in _NAMED_AGG_SKIP or key == "func":
                        continue
                    if isinstance(value, _TYPES["NamedAgg"]):
                        _vet_function(value.aggfunc, name)
                    elif isinstance(value, tuple) and len(value) == 2:
                        _vet_function(value[1], name)
                    elif isinstance(value, (str, types.FunctionType)) or callable(value):
                        _vet_function(value, name)
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
        self._target[key] = value

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


def build_globals(*, filename: str, protected: list[Any]) -> dict[str, Any]:
    """Fresh module globals for one job; resets the per-process guard state."""
    global _STATE
    facades()
    if not _REGISTRY:
        _build_registry()
    _STATE = JobState(filename=filename, protected=protected)
    glb: dict[str, Any] = {
        "__builtins__": _safe_builtins(),
        "__name__": "algorithm",
        "_getattr_": guarded_getattr,
        "_getitem_": operator.getitem,
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
