"""A bundle's ``reads``: the algorithm sees only the columns it declared, on a
runtime that holds every column (a resident dataset) as on one that decoded
only those (a streamed partition)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opal.errors import AlgorithmFailed
from opal.sandbox import Limits, Runtime

_COLUMN_NAMES = (
    "def contributions(data, params):\n"
    "    return data.cdr.columns.to_frame(index=False, name='column')\n"
)
_READS_CELL = (
    "def contributions(data, params):\n"
    "    t = data.cdr\n"
    "    return t[['msisdn', 'cell_id']]\n"
)
EVERY = ["msisdn", "timestamp", "day", "cell_id", "region", "event", "duration_s"]


def _seen(runtime: Runtime, read: dict[str, tuple[str, ...]] | None) -> list[str]:
    return [str(c) for c in runtime.run(source=_COLUMN_NAMES, entrypoint="contributions", params={},
                                        read=read)["column"]]


def test_a_run_sees_only_the_columns_it_reads_and_the_next_run_sees_every_one(runtime: Runtime) -> None:
    assert _seen(runtime, {"cdr": ("region", "msisdn", "day")}) == ["msisdn", "day", "region"]  # the table's order
    assert _seen(runtime, None) == EVERY                      # the resident table itself is untouched
    assert runtime.loaded_columns == {"cdr": EVERY}


def test_an_algorithm_reaching_for_a_column_it_did_not_declare_fails(runtime: Runtime) -> None:
    with pytest.raises(AlgorithmFailed) as exc:
        runtime.run(source=_READS_CELL, entrypoint="contributions", params={}, read={"cdr": ("msisdn", "day")})
    assert exc.value.exit_code == 8
    assert "KeyError" in str(exc.value)
    assert len(runtime.run(source=_READS_CELL, entrypoint="contributions", params={})) == 8  # declared: it runs


def test_a_runtime_started_with_reads_never_holds_the_other_columns(cdr_path: Path) -> None:
    with Runtime(tables={"cdr": cdr_path}, limits=Limits(cpu_seconds=20, wall_seconds=30),
                 read={"cdr": ("msisdn", "region")}) as narrow:
        assert narrow.loaded_columns == {"cdr": ["msisdn", "region"]}
        assert narrow.table_columns == {"cdr": EVERY}
        assert _seen(narrow, None) == ["msisdn", "region"]
        with pytest.raises(AlgorithmFailed):
            narrow.run(source=_READS_CELL, entrypoint="contributions", params={})
        assert narrow.unit_count("msisdn") == 5
        narrow.reload(tables={"cdr": cdr_path})               # every column again, the same zygote
        assert narrow.loaded_columns == {"cdr": EVERY}
        assert _seen(narrow, None) == EVERY
