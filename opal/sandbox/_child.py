"""What runs inside one sandbox child: compile, execute, hand back one table.

The output channel carries exactly one record, framed by its length: ``R`` +
the contributions table as Arrow IPC, or ``E`` + a JSON error. Error messages
are built here from fixed text, the exception *type name* and the algorithm's
line number; the exception's own message never leaves the child (an
algorithm could put a data value into it).
"""

from __future__ import annotations

import json
import os
import struct
import types
from typing import Any

from opal.errors import AlgorithmFailed, InternalError, LimitExceeded, OpalError, PolicyViolation

__all__ = ["run_job", "execute", "encode_error", "Record", "RECORD_OK", "RECORD_ERROR", "EXIT_MEMORY"]

# The child's exit status when it ran out of memory writing its result.
EXIT_MEMORY = 5
RECORD_OK = b"R"
RECORD_ERROR = b"E"
# The frame before a record: its length (tag included), then the tag.
FRAME = struct.Struct("!Qc")

# A record: its tag and its payload (bytes, or an _ArrowStream).
Record = tuple[bytes, Any]

# Fixed, data-free explanations for common failures.
_HINTS: dict[str, str] = {
    "KeyError": "a key or column was not found",
    "IndexError": "an index was out of range",
    "ZeroDivisionError": "division by zero",
    "TypeError": "an operation got a value of the wrong type",
    "ValueError": "an operation got an invalid value",
    "AttributeError": "an attribute does not exist",
    "NameError": "a name is not defined",
    "RecursionError": "recursion too deep",
    "OverflowError": "a number was too large",
    "MergeError": "a merge was not possible",
    "StopIteration": "an iterator was exhausted",
    "UnboundLocalError": "a local variable was used before assignment",
    "AssertionError": "an assertion failed",
    "OutOfBoundsDatetime": "a date was out of range",
    "ParserError": "a value could not be parsed",
    "DateParseError": "a date could not be parsed",
    "IntCastingNaNError": "missing values cannot be cast to integer",
    "InvalidIndexError": "an index operation was invalid",
    "ZoneInfoNotFoundError": "a time zone name is not an IANA zone",
}


def _algorithm_line(exc: BaseException, filename: str) -> int | None:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _literal_hint(source: str, line: int | None) -> str | None:
    """A did-you-mean for a string literal on the failing line that is close
    to a dataset column (``cdr["duraton_s"]``). Source and schema only."""
    import ast

    from opal.sandbox import _guards

    if line is None or not source:
        return None
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.lineno == line:
            hint = _guards.column_hint(node.value)
            if hint is not None:
                return hint
    return None


def _failure(exc: BaseException, *, filename: str, entrypoint: str, source: str = "") -> OpalError:
    from opal.sandbox import _guards

    violation = _guards.violation()
    if violation is not None:
        return PolicyViolation(violation)
    limit = _guards.limit_hit()
    if limit is not None:
        return LimitExceeded(limit)
    if isinstance(exc, OpalError):
        return exc
    line = _algorithm_line(exc, filename)
    where = f"{filename}:{line}" if line is not None else filename
    if isinstance(exc, MemoryError):
        return LimitExceeded(f"{where}: memory limit (memory_bytes) exceeded")
    name = type(exc).__name__
    if isinstance(exc, ImportError):
        # The algorithm reached a library part that needs the disk (numpy.test
        # imports pytest): its own doing, not the worker's.
        return AlgorithmFailed(
            f"{where}: {entrypoint}() raised {name} (a library feature that is not available "
            "in the sandbox)"
        )
    hint = _HINTS.get(name)
    text = f"{where}: {entrypoint}() raised {name}"
    if isinstance(exc, KeyError):
        column = _literal_hint(source, line)
        if column is not None:
            return AlgorithmFailed(f"{text} ({column})")
    return AlgorithmFailed(f"{text} ({hint})" if hint else text)


def encode_error(error: OpalError) -> Record:
    return RECORD_ERROR, json.dumps(error.to_dict()).encode()


def _index_as_columns(result: Any) -> Any:
    """Named index levels (a groupby result without reset_index) become
    columns; an unnamed index carries no contribution and is dropped."""
    names = list(result.index.names)
    if all(isinstance(n, str) for n in names) and not any(n in result.columns for n in names):
        return result.reset_index()
    return result


def _serialize(result: Any, limits: dict[str, Any], *, entrypoint: str) -> Record:
    import pandas as pd
    import pyarrow as pa

    if type(result) is not pd.DataFrame:
        raise AlgorithmFailed(
            f"{entrypoint}() must return a pandas DataFrame, got {type(result).__name__}"
        )
    max_rows = int(limits["max_output_rows"])
    max_bytes = int(limits["max_output_bytes"])
    if len(result) > max_rows:
        raise LimitExceeded(f"result exceeds the max_output_rows limit of {max_rows} rows")
    result = _index_as_columns(result)
    if not all(isinstance(c, str) for c in result.columns) or not result.columns.is_unique:
        raise AlgorithmFailed(f"{entrypoint}() must return a table with unique text column names")
    if int(result.memory_usage(index=False, deep=True).sum()) > max_bytes:
        raise LimitExceeded(f"result exceeds the max_output_bytes limit of {max_bytes} bytes")
    try:
        payload = _ArrowStream(pa.Table.from_pandas(result, preserve_index=False, nthreads=1))
    except (pa.ArrowException, TypeError, ValueError):
        raise AlgorithmFailed(
            f"{entrypoint}() returned a column that is not a plain value type"
        ) from None
    if payload.nbytes > max_bytes:
        raise LimitExceeded(f"result exceeds the max_output_bytes limit of {max_bytes} bytes")
    return RECORD_OK, payload


class _ArrowStream:
    """A contributions table as an Arrow IPC stream of known size, written
    straight to the output channel (no in-memory copy of a large table)."""

    def __init__(self, table: Any) -> None:
        import pyarrow as pa

        self.table = table
        sink = pa.MockOutputStream()
        self.write_to(sink)
        self.nbytes = int(sink.size())

    def write_to(self, sink: Any) -> None:
        import pyarrow as pa

        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)


def execute(job: dict[str, Any], tables: dict[str, Any]) -> Record:
    """Compile and run one job in this process; return the output record."""
    from opal.sandbox import _guards
    from opal.sandbox.policy import compile_algorithm

    filename = job["filename"]
    entrypoint = job["entrypoint"]
    try:
        code = compile_algorithm(job["source"], filename=filename, entrypoint=entrypoint)
        schema = {name: [str(c) for c in frame.columns] for name, frame in tables.items()}
        glb = _guards.build_globals(filename=filename, protected=list(tables.values()), schema=schema)
        data = _guards.make_data(tables)
        params = json.loads(job["params"])
        exec(code, glb)
        fn = glb.get(entrypoint)
        if not isinstance(fn, types.FunctionType):
            raise PolicyViolation(f"{filename}: entrypoint '{entrypoint}' is not a function")
        result = fn(data, params)
        violation = _guards.violation()
        if violation is not None:
            raise PolicyViolation(violation)
        limit = _guards.limit_hit()
        if limit is not None:
            raise LimitExceeded(limit)
        return _serialize(result, job["limits"], entrypoint=entrypoint)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a scrubbed record
        if isinstance(exc, (SystemExit, KeyboardInterrupt)) and _guards.violation() is None:
            return encode_error(AlgorithmFailed(f"{filename}: {entrypoint}() was interrupted"))
        try:
            error = _failure(exc, filename=filename, entrypoint=entrypoint, source=job["source"])
        except BaseException:  # noqa: BLE001 - e.g. out of memory while explaining
            error = AlgorithmFailed(f"{filename}: {entrypoint}() failed")
        return encode_error(error)


def _write_all(fd: int, *parts: bytes) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]


def run_job(job: dict[str, Any], tables: dict[str, Any], result_fd: int, layers: dict[str, bool]) -> int:
    """Entry point in the forked child; returns the process exit status."""
    from opal.sandbox import _isolation, _warm

    _warm.allocate_from_heap()
    try:
        applied = _isolation.harden(limits=job["limits"], result_fd=result_fd, layers=layers)
        missing = [name for name, on in layers.items() if on and not applied.get(name)]
        if missing:
            raise InternalError(f"sandbox layer {missing[0]} could not be applied")
    except BaseException as exc:  # noqa: BLE001
        error = exc if isinstance(exc, OpalError) else InternalError(
            f"sandbox isolation failed: {type(exc).__name__}"
        )
        record = encode_error(error)
    else:
        record = execute(job, tables)
    import pyarrow as pa

    tag, payload = record
    try:
        if isinstance(payload, _ArrowStream):
            _write_all(result_fd, FRAME.pack(1 + payload.nbytes, tag))
            with os.fdopen(result_fd, "wb", closefd=False) as out:
                payload.write_to(out)
        else:
            _write_all(result_fd, FRAME.pack(1 + len(payload), tag), payload)
    except MemoryError:
        return EXIT_MEMORY
    except (OSError, pa.ArrowException):
        return 3
    return 0
