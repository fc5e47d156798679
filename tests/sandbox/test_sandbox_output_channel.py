"""The one output channel: a large table arrives exactly; a malformed or
oversized record from a (subverted) child is refused."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from opal.errors import InternalError, LimitExceeded
from opal.sandbox import Limits, Runtime
from opal.sandbox._child import FRAME, RECORD_OK
from opal.sandbox.runtime import _outcome, _RecordReader

_DONE = {"op": "done", "exit": 0, "signal": None, "timed_out": False, "cpu_seconds": 0.1}


def _read(data: bytes, *, cap: int) -> _RecordReader:
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(data)
    reader = _RecordReader(cap=cap)
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while reader.feed(pipe.fileno()):
            pass
    return reader


def test_large_result_arrives_exactly(runtime: Runtime) -> None:
    source = '''
import numpy as np
import pandas as pd

def contributions(data, params):
    n = params["n"]
    return pd.DataFrame({
        "msisdn": np.arange(n, dtype="int64"),
        "region": pd.Series(["north", "south", "east"] * (n // 3), dtype="str"),
        "value": np.arange(n, dtype="float64") / 7,
        "day": np.arange(n, dtype="int64") % 14,
    })
'''
    n = 300_000
    out = runtime.run(source=source, entrypoint="contributions", params={"n": n})
    expected = pd.DataFrame({
        "msisdn": np.arange(n, dtype="int64"),
        "region": pd.Series(["north", "south", "east"] * (n // 3), dtype="str"),
        "value": np.arange(n, dtype="float64") / 7,
        "day": np.arange(n, dtype="int64") % 14,
    })
    pd.testing.assert_frame_equal(out, expected)
    out.loc[out["day"] == 0, "value"] = 0.0  # the caller owns a writable table


def test_record_followed_by_more_bytes_is_refused() -> None:
    reader = _read(FRAME.pack(3, RECORD_OK) + b"ab" + b"more", cap=2**20)
    with pytest.raises(InternalError, match="more than one record"):
        _outcome(reader, _DONE, Limits(), source="", filename="algorithm.py")


def test_truncated_record_is_refused() -> None:
    reader = _read(FRAME.pack(100, RECORD_OK) + b"ab", cap=2**20)
    with pytest.raises(InternalError, match="truncated"):
        _outcome(reader, _DONE, Limits(), source="", filename="algorithm.py")


def test_record_announced_over_the_byte_cap_is_refused_unread() -> None:
    reader = _read(FRAME.pack(2**40, RECORD_OK) + b"ab", cap=2**20)
    assert reader.payload is None
    with pytest.raises(LimitExceeded, match="max_output_bytes"):
        _outcome(reader, _DONE, Limits(), source="", filename="algorithm.py")


def test_record_that_is_not_arrow_is_refused() -> None:
    reader = _read(FRAME.pack(3, RECORD_OK) + b"ab", cap=2**20)
    with pytest.raises(InternalError, match="not an Arrow stream"):
        _outcome(reader, _DONE, Limits(), source="", filename="algorithm.py")
