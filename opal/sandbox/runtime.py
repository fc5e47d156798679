"""The trusted side of the sandbox: start a zygote per dataset, run jobs in it.

``Runtime`` is what a worker holds for its lifetime (one per dataset). It
never passes its environment, descriptors or working directory on: the
zygote gets an empty environment, its control socket, an empty temporary
directory and the table file paths.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import opal
from opal.errors import (
    AlgorithmFailed,
    BadInputError,
    InternalError,
    LimitExceeded,
    OpalError,
    PolicyViolation,
    ReleaseRefused,
    error_from_dict,
)
from opal.sandbox import _protocol
from opal.sandbox._child import EXIT_MEMORY, FRAME, RECORD_ERROR, RECORD_OK
from opal.sandbox.limits import LAYERS, Limits
from opal.sandbox.policy import check_source

__all__ = ["Runtime", "run_algorithm", "active_layers"]

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from opal.sandbox._zygote import main; main(int(sys.argv[2]))"
)
_ENV = {
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # glibc's malloc asks for transparent huge pages (madvise mode) on the heap
    # it grows: a run child faults its temporaries in 2 MB at a time instead of
    # 4 kB. A trivial run on a warm runtime: 28.0 -> 26.0 ms (median of 35,
    # interleaved, three times); the zygote's memory is the same within 3 MB.
    # Ignored by a glibc older than 2.35.
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
}
_START_TIMEOUT = 300.0
# How long after the wall limit the Runtime waits before it kills the zygote.
_BACKSTOP_SECONDS = 15.0
# Fewer, larger transfers for big contributions tables (Linux's default pipe
# holds 64 KiB; 1 MiB is the unprivileged maximum).
_PIPE_BYTES = 2**20


def _check_tables(tables: dict[str, Path]) -> dict[str, str]:
    if not tables:
        raise BadInputError("the sandbox needs at least one table; got none")
    checked: dict[str, str] = {}
    for name, path in tables.items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise BadInputError(f"table name {name!r} must be a public Python identifier")
        resolved = Path(path).resolve()
        if not resolved.is_file():
            raise BadInputError(f"table {name}: file {resolved} does not exist")
        checked[name] = str(resolved)
    return checked


def _check_read(read: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]] | None:
    """``read`` as the zygote takes it: table → column names (None: every column)."""
    if read is None:
        return None
    return {str(name): [str(c) for c in columns] for name, columns in read.items()}


def _require(layers: dict[str, bool], required: tuple[str, ...]) -> None:
    missing = [name for name in required if not layers.get(name)]
    if missing:
        raise InternalError(
            f"sandbox isolation layer '{missing[0]}' is required by policy but not active on "
            "this host; enable it (seccomp: install libseccomp + pyseccomp; "
            "network_namespace: allow unprivileged user namespaces) or relax require_layers"
        )


class Runtime:
    """Holds one dataset resident (read-only) and runs many jobs, each in a fresh child.

    Raises (from the constructor):
        BadInputError: a table path does not exist or a name is not an identifier.
        InternalError: the zygote could not start, or a required layer is missing.
    """

    def __init__(
        self,
        *,
        tables: dict[str, Path],
        limits: Limits | None = None,
        read: Mapping[str, Iterable[str]] | None = None,
        categorical: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        if limits is None:
            limits = Limits()
        self._tables = _check_tables(tables)
        self._read = _check_read(read)
        self._categorical = _check_read(categorical)
        self.limits = limits
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._workdir: str | None = None
        self._layers: dict[str, bool] = {}
        self.table_rows: dict[str, int] = {}
        self.table_columns: dict[str, list[str]] = {}  # every column of each table's file (its public schema)
        self.loaded_columns: dict[str, list[str]] = {}  # the columns held (``read``), in the file's order
        self.warm_memory_bytes = 0
        self._counts: dict[tuple[str, str], int] = {}
        self._owner = os.getpid()
        self._start()
        try:
            _require(self._layers, limits.require_layers)
        except InternalError:
            self.close()
            raise

    # ----------------------------------------------------------- lifecycle

    def _start(self) -> None:
        if self._workdir and self._owner == os.getpid():
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = tempfile.mkdtemp(prefix="opal-sandbox-")
        os.chmod(self._workdir, 0o700)
        cwd = os.path.join(self._workdir, "cwd")
        os.mkdir(cwd, 0o700)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = str(Path(opal.__file__).resolve().parent.parent)
        log = open(os.path.join(self._workdir, "zygote.log"), "wb")
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [sys.executable, "-I", "-B", "-c", _BOOT, root, str(child_sock.fileno())],
                env=dict(_ENV),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                close_fds=True,
                pass_fds=(child_sock.fileno(),),
                start_new_session=True,
            )
        except OSError as exc:
            parent_sock.close()
            raise InternalError(f"cannot start the sandbox zygote: {exc.strerror}") from None
        finally:
            child_sock.close()
            log.close()
        self._sock = parent_sock
        try:
            _protocol.send(
                parent_sock,
                {
                    "op": "config",
                    "tables": self._tables,
                    "read": self._read,
                    "categorical": self._categorical,
                    "warm_memory_bytes": min(self.limits.warm_memory_bytes, self.limits.memory_bytes),
                    "warm_memory_ratio": self.limits.warm_memory_ratio,
                },
            )
            parent_sock.settimeout(_START_TIMEOUT)
            message, _ = _protocol.recv(parent_sock)
            parent_sock.settimeout(None)
        except (OSError, _protocol.ChannelClosed, ValueError) as exc:
            detail = self._log_tail()
            self._kill()
            raise InternalError(
                f"sandbox zygote did not start ({type(exc).__name__}){detail}"
            ) from None
        if message.get("op") != "ready":
            self._kill()
            raise InternalError(
                f"sandbox zygote failed to start: {message.get('message', 'unknown error')}"
            )
        self._layers = {name: bool(message["layers"].get(name)) for name in LAYERS}
        self._describe(message["tables"])
        self.warm_memory_bytes = int(message.get("warm_memory_bytes", 0))

    def _describe(self, tables: dict[str, Any]) -> None:
        self.table_rows = {n: int(v["rows"]) for n, v in tables.items()}
        # the dataset's schema (public): words a child's column hint may use
        self.table_columns = {n: [str(c) for c in v.get("columns", [])] for n, v in tables.items()}
        self.loaded_columns = {n: [str(c) for c in v.get("loaded", [])] for n, v in tables.items()}

    def holds(self, read: Mapping[str, Iterable[str]] | None) -> bool:
        """True if the resident tables have every column ``read`` names (None: all of them)."""
        if read is None:
            return all(self.loaded_columns.get(n) == cs for n, cs in self.table_columns.items())
        return all(set(cs) <= set(self.loaded_columns.get(n, ())) for n, cs in read.items())

    def _ensure_started(self) -> None:
        if self._owner != os.getpid():
            # Inherited across fork (e.g. a Celery prefork child): the zygote
            # and its socket belong to the parent; start our own.
            self._proc, self._sock, self._workdir = None, None, None
            self._owner = os.getpid()
            self._start()
        if self._proc is None or self._proc.poll() is not None:
            self._kill()
            self._start()

    def _log_tail(self) -> str:
        # Where the zygote's own output is, never the output itself: the zygote
        # holds the data, and its stderr (a reader's error, a traceback) may quote
        # a value of it, while this message can reach a requester's error.
        if not self._workdir:
            return ""
        log = Path(self._workdir, "zygote.log")
        return f"; its output is in {log} on the worker's machine" if log.is_file() else ""

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            targets: tuple[Callable[[], None], ...] = (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill)
            for target in targets:
                try:
                    target()
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Stop the zygote and remove its temporary directory."""
        with self._lock:
            if self._owner != os.getpid():
                # A forked copy: the zygote belongs to the parent process.
                if self._sock is not None:
                    self._sock.close()
                self._proc = self._sock = None
                self._workdir = None
                return
            if self._sock is not None and self._proc is not None:
                try:
                    _protocol.send(self._sock, {"op": "exit"})
                    self._proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill()
            if self._workdir:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._proc is not None:
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def reload(
        self,
        *,
        tables: dict[str, Path],
        limits: Limits | None = None,
        read: Mapping[str, Iterable[str]] | None = None,
        categorical: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Hold ``tables`` instead of the current ones, in the same zygote
        (of each table named in ``read``, those columns only; the text columns
        ``categorical`` names as pandas Categoricals, decoded from the file's
        dictionary without making a string).

        For a worker streaming the partitions of a dataset it cannot hold
        whole: loading a partition costs less than starting a zygote
        (interpreter, imports, layer probes, warm-up run). The isolation of
        the jobs is the same as in a fresh runtime: every job still runs in
        a fresh child forked after the load. The warm heap is kept.

        Raises:
            BadInputError: a table path does not exist or a name is not an identifier.
            InternalError: the zygote could not load them (it is stopped; the
                runtime starts afresh on its next job).
        """
        checked = _check_tables(tables)
        wanted = _check_read(read)
        as_codes = _check_read(categorical)
        with self._lock:
            self._tables, self._read, self._categorical = checked, wanted, as_codes
            if limits is not None:
                self.limits = limits
            self._counts.clear()
            if self._owner != os.getpid() or self._proc is None or self._proc.poll() is not None:
                self._ensure_started()  # a fresh zygote loads the new tables itself
                return
            assert self._sock is not None
            try:
                _protocol.send(self._sock, {"op": "load", "tables": checked, "read": wanted, "categorical": as_codes})
                self._sock.settimeout(_START_TIMEOUT)
                message, _ = _protocol.recv(self._sock)
                self._sock.settimeout(None)
            except (OSError, _protocol.ChannelClosed, ValueError) as exc:
                detail = self._log_tail()
                self._kill()
                raise InternalError(f"sandbox zygote did not load its tables ({type(exc).__name__}){detail}") from None
            if message.get("op") != "loaded":
                self._kill()
                raise InternalError(
                    f"sandbox zygote failed to load its tables: {message.get('message', 'unknown error')}"
                )
            self._describe(message["tables"])

    def layers(self) -> dict[str, bool]:
        """Which isolation layers are active for jobs of this runtime."""
        return dict(self._layers)

    def unit_count(self, column: str, *, table: str | None = None) -> int:
        """How many distinct units ``column`` of the resident table holds: the
        range of a run's pseudonyms, for the release gate's unit check.

        Raises:
            BadInputError: no such table or column.
        """
        if table is None:
            if len(self._tables) != 1:
                raise BadInputError("unit_count() needs table= when the runtime holds several tables")
            table = next(iter(self._tables))
        key = (table, column)
        with self._lock:
            if key not in self._counts:
                self._ensure_started()
                assert self._sock is not None
                _protocol.send(self._sock, {"op": "count", "table": table, "column": column})
                reply, _ = _protocol.recv(self._sock)
                if not reply.get("ok"):
                    raise BadInputError(f"table {table!r} has no column {column!r}")
                self._counts[key] = int(reply["count"])
            return self._counts[key]

    # ----------------------------------------------------------------- runs

    def run(
        self,
        *,
        source: str,
        entrypoint: str,
        params: dict[str, Any],
        filename: str = "algorithm.py",
        limits: Limits | None = None,
        columns: tuple[str, ...] | None = None,
        pseudonyms: dict[str, Any] | None = None,
        read: Mapping[str, Iterable[str]] | None = None,
        categorical: Mapping[str, Iterable[str]] | None = None,
    ) -> Any:
        """Run one algorithm in a fresh child and return its contributions table.

        ``columns`` are the names the contributions must have, exactly (the
        bundle's unit, group columns and value, when declared). The table is
        checked against them and against the limits' caps on columns, rows,
        bytes and label length while it is read, before any pandas work.
        ``pseudonyms`` (``opal.sandbox.pseudonyms.for_run``) replaces the unit
        column the algorithm sees by the run's pseudonyms. ``read`` (table →
        columns: a bundle's ``reads``): the algorithm sees only those columns.
        ``categorical`` (table → text columns: a bundle's ``categorical``):
        the algorithm sees those as pandas Categoricals with sorted categories,
        every other text column as plain text, whatever the zygote holds.

        Raises:
            ReleaseRefused: the table does not have the declared columns or
                holds a column type contributions cannot have (exit 3).
            PolicyViolation: the code broke the sandbox policy (exit 4).
            LimitExceeded: a resource limit was hit; the message names it (exit 5).
            AlgorithmFailed: the algorithm raised; type and line only (exit 8).
            BadInputError: params are not JSON.
            InternalError: the sandbox itself failed.
        """
        limits = limits or self.limits
        check_source(source, filename=filename, entrypoint=entrypoint)
        try:
            params_json = json.dumps(params, allow_nan=False)
        except (TypeError, ValueError):
            raise BadInputError("params must be plain JSON values") from None
        job = {
            "source": source,
            "entrypoint": entrypoint,
            "filename": filename,
            "params": params_json,
            "limits": limits.to_dict(),
            "pseudonyms": pseudonyms,
            "read": _check_read(read),
            "categorical": _check_read(categorical),
        }
        expected = _check_expected(columns)
        with self._lock:
            self._ensure_started()
            _require(self._layers, limits.require_layers)
            return self._run_locked(job, limits, expected)

    def _run_locked(self, job: dict[str, Any], limits: Limits, columns: tuple[str, ...] | None) -> Any:
        assert self._sock is not None
        read_fd, write_fd = os.pipe()
        try:
            _protocol.send(self._sock, {"op": "run", "job": job}, fds=[write_fd])
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            self._kill()
            raise InternalError("sandbox zygote is gone; the next run restarts it") from None
        os.close(write_fd)
        try:
            fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe is only slower
        reader = _RecordReader(cap=limits.max_output_bytes + 2**20, shape=_Shape(columns, limits))
        deadline = time.monotonic() + limits.wall_seconds + _BACKSTOP_SECONDS
        status: dict[str, Any] | None = None
        selector = selectors.DefaultSelector()
        selector.register(read_fd, selectors.EVENT_READ)
        selector.register(self._sock, selectors.EVENT_READ)
        pipe_open = True
        try:
            while pipe_open or status is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._kill()
                    raise LimitExceeded(
                        f"wall-clock limit of {limits.wall_seconds:g} s (wall_seconds) exceeded"
                    )
                for key, _ in selector.select(remaining):
                    if key.fileobj == read_fd:
                        if not reader.feed(read_fd):
                            selector.unregister(read_fd)
                            os.close(read_fd)
                            read_fd = -1
                            pipe_open = False
                    else:
                        try:
                            message, fds = _protocol.recv(self._sock)
                        except (_protocol.ChannelClosed, OSError, ValueError):
                            self._kill()
                            raise InternalError("sandbox zygote died during a run") from None
                        for fd in fds:
                            os.close(fd)
                        if message.get("op") == "done":
                            status = message
                            selector.unregister(self._sock)
        except (LimitExceeded, InternalError):
            raise  # the zygote was killed already
        except BaseException:
            # Interrupted from outside while the child still runs (Celery's soft time
            # limit, a signal): its "done" would come later on the control socket and
            # be read as the next run's. A fresh zygote for the next run instead.
            self._kill()
            raise
        finally:
            selector.close()
            if read_fd >= 0:
                os.close(read_fd)
        schema_words = frozenset(self.table_columns) | {c for cs in self.table_columns.values() for c in cs}
        return _outcome(reader, status, limits, source=job["source"], filename=job["filename"],
                        schema_words=schema_words)


class _RecordReader:
    """Reads the one framed record a child writes straight into a buffer sized
    from its frame, so a large table is copied once on the way in; refuses a
    record over ``cap`` bytes and anything after the record."""

    def __init__(self, *, cap: int, shape: _Shape | None = None) -> None:
        self.cap = cap
        self.shape = shape
        self.refused: OpalError | None = None
        self.head = bytearray()
        self.tag = b""
        self.payload: Any = None
        self.filled = 0
        self.overflow = False
        self.trailing = False

    @property
    def complete(self) -> bool:
        return self.payload is not None and self.filled == len(self.payload)

    def feed(self, fd: int) -> bool:
        """Read what ``fd`` has; False once the stream ended or must be dropped."""
        if self.payload is None:
            chunk = os.read(fd, FRAME.size - len(self.head))
            if not chunk:
                return False
            self.head += chunk
            if len(self.head) < FRAME.size:
                return True
            size, self.tag = FRAME.unpack(self.head)
            if size > self.cap:
                self.overflow = True
                return False
            import numpy as np

            # not bytearray: numpy neither zeroes it first nor faults it in
            # 4 KiB at a time (it asks for huge pages)
            try:
                self.payload = np.empty(max(size - 1, 0), dtype=np.uint8)
            except MemoryError:
                self.refused = LimitExceeded(
                    "the worker has no memory for this result; lower max_output_bytes or give the worker more"
                )
                return False
            return True
        if self.complete:
            self.trailing = bool(os.read(fd, 1))
            return False
        read = os.readv(fd, [memoryview(self.payload)[self.filled :]])
        self.filled += read
        if self.shape is not None and self.tag == RECORD_OK and not self.shape.schema_checked:
            # the schema leads the stream: refuse a wrong shape before the rest arrives
            try:
                self.shape.check_schema_prefix(self.payload, self.filled)
            except OpalError as exc:
                self.refused = exc
                return False
        return read > 0


# Error kinds a child may report; anything else it claims becomes InternalError.
_CHILD_ERRORS = (PolicyViolation, LimitExceeded, AlgorithmFailed, InternalError)
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_RAISED = re.compile(r"raised (\w+)")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def _known_exception_names() -> frozenset[str]:
    names = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    import pandas.errors

    names.update(n for n, v in vars(pandas.errors).items() if isinstance(v, type))
    names.update({"ArrowInvalid", "ArrowTypeError", "ArrowNotImplementedError", "AxisError",
                  "DTypePromotionError", "ArrowIndexError", "ArrowKeyError",
                  "ZoneInfoNotFoundError"})
    return frozenset(names)


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CACHE: dict[str, frozenset[str]] = {}


def _known_exceptions() -> frozenset[str]:
    if "exceptions" not in _CACHE:
        _CACHE["exceptions"] = _known_exception_names()
    return _CACHE["exceptions"]


def _vocabulary() -> frozenset[str]:
    """Every word a legitimate child message can contain that is not from the
    source: the words of the sandbox's and RestrictedPython's message texts,
    exception names and library class names."""
    if "vocabulary" in _CACHE:
        return _CACHE["vocabulary"]
    import ast
    import datetime
    import types

    import numpy
    import pandas
    import RestrictedPython.transformer
    from pandas.api import typing as pdt

    words: set[str] = set(_known_exceptions())
    files = list(Path(__file__).parent.glob("*.py"))
    files.append(Path(RestrictedPython.transformer.__file__))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.update(_WORD.findall(node.value))
    import importlib

    # the accessor, groupby and window classes a denial names (StringMethods, ...)
    internals = [importlib.import_module(name) for name in (
        "pandas.core.strings.accessor", "pandas.core.indexes.accessors", "pandas.core.resample",
        "pandas.core.window.rolling", "pandas.core.window.ewm", "pandas.core.window.expanding",
        "pandas.core.groupby.generic", "pandas.core.arrays.categorical", "pandas.core.indexing",
    )]
    for module in (builtins, types, datetime, numpy, pandas, pdt, *internals):
        for value in vars(module).values():
            if isinstance(value, type):
                words.add(value.__name__)
    _CACHE["vocabulary"] = frozenset(words)
    return _CACHE["vocabulary"]


def _scrubbed_error(
    payload: bytes, *, source: str, filename: str, limits: Limits, schema_words: frozenset[str] = frozenset()
) -> OpalError:
    """Rebuild the child's error; withhold its text unless it provably holds no data.

    The child already builds messages from fixed text, names from the source
    and line numbers. This re-checks that on the trusted side, in case the
    child was subverted: every quoted token must occur in the source, every
    number must be a line of the source or a limit, every raised type a known
    exception class.
    """
    try:
        data = json.loads(payload)
        error = error_from_dict(data)
    except (ValueError, TypeError, AttributeError):
        return InternalError("sandbox child sent a malformed error")
    if not isinstance(error, _CHILD_ERRORS):
        return InternalError("sandbox child reported an error kind it may not report")
    message = error.message
    lines = source.count("\n") + 1
    allowed_numbers = {str(v) for v in limits.to_dict().values() if isinstance(v, (int, float))}
    allowed_numbers |= {f"{v:g}" for v in limits.to_dict().values() if isinstance(v, float)}
    ok = len(message) <= 500 and message.isascii() and message.isprintable()
    if ok:
        for match in _QUOTED.finditer(message):
            token = match.group(1) if match.group(1) is not None else match.group(2)
            if token and token not in source and token != filename:
                ok = False
        known = _vocabulary()
        source_words = set(_WORD.findall(source)) | {filename} | set(schema_words)
        for word in _WORD.findall(message.replace(filename, "")):
            if word not in known and word not in source_words:
                ok = False
        for match in _RAISED.finditer(message):
            if match.group(1) not in known:
                ok = False
        body = message.replace(filename, "")
        for match in _NUMBER.finditer(body):
            number = match.group(0)
            if number in allowed_numbers:
                continue
            if number.isdigit() and int(number) <= lines and f":{number}" in message:
                continue
            ok = False
    if ok:
        return error
    return type(error)(f"{filename}: {error.kind} error (details withheld: the message failed the data check)")




_EXPECTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _check_expected(columns: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if columns is None:
        return None
    names = tuple(columns)
    if not names or len(set(names)) != len(names) or not all(
        isinstance(c, str) and _EXPECTED_NAME.fullmatch(c) for c in names
    ):
        raise BadInputError(
            "columns must be distinct identifiers (the unit, group and value columns of [privacy])"
        )
    return names


class _Shape:
    """The declared shape of a contributions table and the caps on it; checks
    an Arrow stream before anything but Arrow touches it. Messages name the
    declared columns and the caps, never a name the algorithm chose."""

    def __init__(self, columns: tuple[str, ...] | None, limits: Limits) -> None:
        self.columns = columns
        self.limits = limits
        self.schema_checked = False

    def check_schema_prefix(self, payload: Any, filled: int) -> None:
        """Check the schema once its message has arrived (``filled`` bytes)."""
        if filled < 8:
            return
        import pyarrow as pa

        head = payload[:8].tobytes()
        if head[:4] != b"\xff\xff\xff\xff":
            raise InternalError("sandbox child sent a result that is not an Arrow stream")
        size = 8 + int.from_bytes(head[4:8], "little", signed=True)
        if size > len(payload):
            raise InternalError("sandbox child sent a result that is not an Arrow stream")
        if filled < size:
            return
        try:
            schema = pa.ipc.read_schema(pa.py_buffer(payload[:size].tobytes()))
        except (pa.ArrowException, ValueError):
            raise InternalError("sandbox child sent a result that is not an Arrow stream") from None
        self.check_schema(schema)

    def check_schema(self, schema: Any) -> None:
        import pyarrow as pa

        self.schema_checked = True
        names = list(schema.names)
        if len(names) > self.limits.max_output_columns:
            raise LimitExceeded(
                f"contributions have more columns than the max_output_columns limit of "
                f"{self.limits.max_output_columns}"
            )
        if self.columns is not None:
            if len(set(names)) != len(names) or set(names) != set(self.columns):
                missing = [c for c in self.columns if c not in names]
                extra = any(n not in self.columns for n in names)
                raise ReleaseRefused(
                    f"contributions must have exactly the columns {', '.join(self.columns)} "
                    f"(unit, groups, value as declared in [privacy]); "
                    + (f"missing {', '.join(missing)}; " if missing else "")
                    + ("and other columns; " if extra else "")
                    + "return exactly the declared columns"
                )
        for name, field in zip(names, schema, strict=True):
            kind = field.type
            if pa.types.is_dictionary(kind):
                kind = kind.value_type
            if not (
                pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                or pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_date(kind) or pa.types.is_timestamp(kind) or pa.types.is_null(kind)
            ):
                label = name if self.columns is not None else "a column"
                raise ReleaseRefused(
                    f"contributions column {label} holds {kind}; contributions hold numbers, "
                    "text, booleans or dates"
                )

    def read(self, payload: Any) -> Any:
        """The checked Arrow table: columns, rows, label bytes, memory estimate."""
        import pyarrow as pa
        import pyarrow.compute as pc

        reader = pa.ipc.open_stream(pa.py_buffer(payload))
        self.check_schema(reader.schema)
        rows = 0
        batches = []
        for batch in reader:
            rows += batch.num_rows
            if rows > self.limits.max_output_rows:
                raise LimitExceeded(
                    f"result exceeds the max_output_rows limit of {self.limits.max_output_rows} rows"
                )
            for column in batch.columns:
                values = column.dictionary if pa.types.is_dictionary(column.type) else column
                if (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)) and len(values):
                    longest = pc.max(pc.binary_length(values)).as_py() or 0
                    if longest > self.limits.max_label_bytes:
                        raise LimitExceeded(
                            f"a text label of the contributions exceeds the max_label_bytes limit of "
                            f"{self.limits.max_label_bytes} bytes"
                        )
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=reader.schema)
        need = gate_memory_estimate(rows=rows, columns=table.num_columns, nbytes=len(payload))
        if need > self.limits.gate_memory_bytes:
            # (the estimate itself is not shown: it follows the number of rows)
            raise LimitExceeded(
                "the release gate would need more memory for these contributions than the "
                f"gate_memory_bytes limit of {self.limits.gate_memory_bytes} bytes"
            )
        return table


def gate_memory_estimate(*, rows: int, columns: int, nbytes: int) -> int:
    """Bytes the trusted side may need for a contributions table: the received
    stream and its pandas copy, the gate's integer work arrays (unit keys,
    cell codes, sort order: 8 bytes per column and row each) and, when every
    row is a cell of its own, one decision per cell. Measured on 1-2 M rows
    [unit, text label, day]: 37 B/row with 50 labels, 190 B/row with unique
    labels; this gives 2 x stream + 256 B/row."""
    return 2 * nbytes + rows * (8 * 4 * max(columns, 1) + 160)


def _outcome(
    reader: _RecordReader,
    status: dict[str, Any],
    limits: Limits,
    *,
    source: str,
    filename: str,
    schema_words: frozenset[str] = frozenset(),
) -> Any:
    if reader.refused is not None:
        raise reader.refused
    if reader.overflow:
        raise LimitExceeded(
            f"result exceeds the max_output_bytes limit of {limits.max_output_bytes} bytes"
        )
    if status.get("timed_out"):
        raise LimitExceeded(
            f"wall-clock limit of {limits.wall_seconds:g} s (wall_seconds) exceeded"
        )
    sig = status.get("signal")
    cpu = float(status.get("cpu_seconds") or 0.0)
    if sig is not None:
        if sig == signal.SIGXCPU or cpu >= limits.cpu_seconds:
            raise LimitExceeded(f"CPU time limit of {limits.cpu_seconds} s (cpu_seconds) exceeded")
        if sig == signal.SIGKILL:
            raise LimitExceeded(
                f"the run was killed, most likely for memory; memory_bytes limit is "
                f"{limits.memory_bytes} bytes"
            )
        if sig == signal.SIGSYS:
            raise PolicyViolation("the algorithm made a system call the sandbox forbids")
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        raise AlgorithmFailed(f"the algorithm crashed the interpreter ({name})")
    if status.get("exit") == EXIT_MEMORY:
        raise LimitExceeded(
            f"memory limit of {limits.memory_bytes} bytes (memory_bytes) exceeded while writing the result"
        )
    if reader.payload is None:
        raise InternalError(f"sandbox child ended without a result (exit status {status.get('exit')})")
    if not reader.complete:
        raise InternalError("sandbox child sent a truncated result")
    if reader.trailing:
        raise InternalError("sandbox child sent more than one record")
    payload = reader.payload
    if reader.tag == RECORD_ERROR:
        raise _scrubbed_error(payload.tobytes(), source=source, filename=filename, limits=limits,
                              schema_words=schema_words)
    if reader.tag != RECORD_OK:
        raise InternalError("sandbox child sent an unknown record")
    import pyarrow as pa

    shape = reader.shape or _Shape(None, limits)
    try:
        table = shape.read(payload)
    except (pa.ArrowException, ValueError):
        raise InternalError("sandbox child sent a result that is not an Arrow stream") from None
    try:
        return table.to_pandas()
    except MemoryError:
        raise LimitExceeded(
            f"the worker ran out of memory reading the contributions; lower max_output_bytes "
            f"(now {limits.max_output_bytes}) or gate_memory_bytes"
        ) from None


def run_algorithm(
    *,
    source: str,
    entrypoint: str,
    tables: dict[str, Path],
    params: dict[str, Any],
    limits: Limits | None = None,
    filename: str = "algorithm.py",
    columns: tuple[str, ...] | None = None,
) -> Any:
    """One-shot convenience: start a Runtime, run one job, stop it."""
    if limits is None:
        limits = Limits()
    check_source(source, filename=filename, entrypoint=entrypoint)
    with Runtime(tables=tables, limits=limits) as runtime:
        return runtime.run(
            source=source, entrypoint=entrypoint, params=params, filename=filename, limits=limits,
            columns=columns,
        )


_LAYER_CACHE: dict[str, bool] = {}


def active_layers() -> dict[str, bool]:
    """Which isolation layers a Runtime gets on this host (probed once per process)."""
    if not _LAYER_CACHE:
        with tempfile.TemporaryDirectory(prefix="opal-probe-") as tmp:
            path = Path(tmp, "probe.arrow")
            import pyarrow as pa

            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(
                sink, pa.schema([("x", pa.int64())])
            ) as writer:
                writer.write_table(pa.table({"x": [1]}))
            with Runtime(tables={"probe": path}) as runtime:
                _LAYER_CACHE.update(runtime.layers())
    return dict(_LAYER_CACHE)

