"""The trusted side is bounded before it does work (issue #15): the
contributions table is checked against its declared columns and the caps on
columns, rows, label bytes and gate memory while it is read from the pipe,
before pandas sees it. Messages never carry a name or value the algorithm chose."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
from sandbox_fixtures import SECRET_REGION

from opal.errors import LimitExceeded, OpalError, ReleaseRefused
from opal.sandbox import Limits, Runtime
from opal.sandbox._child import FRAME, RECORD_OK
from opal.sandbox.runtime import _outcome, _RecordReader, _Shape

DECLARED = ("msisdn", "region", "day")


def _run(runtime: Runtime, body: str, *, columns: tuple[str, ...] | None = DECLARED,
         limits: Limits | None = None) -> OpalError | None:
    source = "import pandas as pd\nimport numpy as np\ndef contributions(data, params):\n    " + body + "\n"
    try:
        runtime.run(source=source, entrypoint="contributions", params={}, columns=columns, limits=limits)
    except OpalError as exc:
        return exc
    return None


def test_declared_columns_pass(runtime: Runtime) -> None:
    out = runtime.run(
        source="def contributions(data, params):\n    return data.cdr[['day', 'msisdn', 'region']]\n",
        entrypoint="contributions", params={}, columns=DECLARED,
    )
    assert list(out.columns) == ["day", "msisdn", "region"] and len(out) == 8


def test_twenty_thousand_group_columns_are_refused_before_any_pandas_work(runtime: Runtime) -> None:
    error = _run(runtime, "return pd.DataFrame({'c' + str(i): [1] for i in range(20000)})", columns=None)
    assert isinstance(error, LimitExceeded) and error.exit_code == 5
    assert "max_output_columns limit of 32" in str(error)


def test_undeclared_column_is_refused_without_echoing_its_name(runtime: Runtime) -> None:
    error = _run(runtime, "c = data.cdr[['msisdn', 'region', 'day']]\n"
                          "    c[data.cdr.region.iloc[-1]] = 1\n    return c")
    assert isinstance(error, ReleaseRefused) and error.exit_code == 3
    assert SECRET_REGION not in str(error)
    assert "exactly the columns msisdn, region, day" in str(error)


def test_missing_declared_column_is_named(runtime: Runtime) -> None:
    error = _run(runtime, "return data.cdr[['msisdn', 'region']]")
    assert isinstance(error, ReleaseRefused) and "missing day" in str(error)


def test_long_labels_are_refused(runtime: Runtime) -> None:
    error = _run(runtime, "c = data.cdr[['msisdn', 'day']].copy()\n"
                          "    c['region'] = 'x' * 300\n    return c")
    assert isinstance(error, LimitExceeded) and "max_label_bytes limit of 256" in str(error)


def test_nested_values_are_refused(runtime: Runtime) -> None:
    error = _run(runtime, "c = data.cdr[['msisdn', 'day']].copy()\n"
                          "    c['region'] = c['day'].map(lambda d: [d, d])\n    return c")
    assert isinstance(error, ReleaseRefused), error
    assert "numbers, text, booleans or dates" in str(error)


def test_gate_memory_cap_fails_the_run_cleanly(runtime: Runtime) -> None:
    error = _run(runtime, "return pd.DataFrame({'msisdn': np.arange(200000), 'region': 'north', 'day': 1})",
                 limits=Limits(cpu_seconds=20, wall_seconds=30, gate_memory_bytes=2**20))
    assert isinstance(error, LimitExceeded) and "gate_memory_bytes" in str(error)
    assert "200000" not in str(error)


def _forged(table: pa.Table, *, schema_only: bool = False) -> _RecordReader:
    """What a subverted child could write: a well-framed stream the child's
    own checks never saw (or only its schema, the rest still to come)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    body = sink.getvalue().to_pybytes()
    sent = body[: table.schema.serialize().size] if schema_only else body
    read_fd, write_fd = os.pipe()
    assert len(sent) < 60000
    os.write(write_fd, FRAME.pack(1 + len(body), RECORD_OK) + sent)
    os.close(write_fd)
    limits = Limits(max_output_rows=5000)
    reader = _RecordReader(cap=limits.max_output_bytes, shape=_Shape(None, limits))
    while reader.feed(read_fd):
        pass
    os.close(read_fd)
    return reader


def test_trusted_side_counts_rows_itself() -> None:
    table = pa.table({"msisdn": pa.array(range(6000), pa.int64())})
    reader = _forged(table)
    with pytest.raises(LimitExceeded, match="max_output_rows limit of 5000"):
        _outcome(reader, {"exit": 0}, Limits(max_output_rows=5000), source="", filename="algorithm.py")


def test_trusted_side_refuses_a_wide_schema_as_soon_as_it_arrives() -> None:
    table = pa.table({f"c{i}": pa.array([1], pa.int8()) for i in range(100)})
    reader = _forged(table, schema_only=True)
    assert reader.refused is not None and not reader.complete
    with pytest.raises(LimitExceeded, match="max_output_columns"):
        _outcome(reader, {"exit": 0}, Limits(), source="", filename="algorithm.py")
