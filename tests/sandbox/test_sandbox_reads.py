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


_HUNTS_CELL_ID = (
    "import pandas as pd\n"
    "def contributions(data, params):\n"
    "    t = data.cdr\n"
    "    routes = [\n"
    "        'cell_id' in t.columns,\n"
    "        len(t.filter(like='cell').columns) > 0,\n"
    "        bool(t.reindex(columns=['cell_id'])['cell_id'].notna().any()),\n"
    "        'cell_id' in list(t.to_dict()),\n"
    "        t.shape[1] != 2,\n"
    "        bool(t.isin([11, 12, 13, 14, 15]).to_numpy().any()),\n"
    "    ]\n"
    "    return pd.DataFrame({'msisdn': [1001], 'routes': [sum(routes)]})\n"
)


@pytest.mark.parametrize("loaded", ["resident, cut for the run", "loaded with reads"])
def test_no_public_route_of_the_frame_reaches_a_column_the_bundle_did_not_declare(
        runtime: Runtime, cdr_path: Path, loaded: str) -> None:
    """The attack: a bundle declares two columns, then looks for a third
    (cell_id, values 11-15) by every public route pandas offers."""
    read = {"cdr": ("msisdn", "day")}
    every = runtime.run(source=_HUNTS_CELL_ID, entrypoint="contributions", params={})
    assert int(every["routes"][0]) == 6                  # on the whole table every route finds it
    if loaded == "resident, cut for the run":
        got = runtime.run(source=_HUNTS_CELL_ID, entrypoint="contributions", params={}, read=read)
    else:
        with Runtime(tables={"cdr": cdr_path}, limits=Limits(cpu_seconds=20, wall_seconds=30), read=read) as narrow:
            got = narrow.run(source=_HUNTS_CELL_ID, entrypoint="contributions", params={})
    assert int(got["routes"][0]) == 0


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


@pytest.mark.parametrize("dictionary", [True, False], ids=["dictionary-encoded", "plain"])
def test_the_zygote_loads_text_columns_as_the_same_strings_whatever_their_encoding(
        tmp_path: Path, dictionary: bool) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from opal.sandbox._zygote import _load_table

    table = pa.table({
        "msisdn": pa.array([3, 1, 2, 3, 1], pa.int64()),
        "region": pa.array(["north", None, "södra", "north", ""], pa.string()),
        "event": pa.array(["call", "sms", "call", "data", "call"], pa.large_string()),
        "day": pa.array([0, 1, 1, 2, 2], pa.int64()),
    })
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, use_dictionary=dictionary, row_group_size=2)
    frame, nbytes, names = _load_table(str(path))
    pd.testing.assert_frame_equal(frame, pq.read_table(path).to_pandas())
    assert names == ["msisdn", "region", "event", "day"] and nbytes > 0
    cut, _, _ = _load_table(str(path), ["day", "region", "msisdn"])
    pd.testing.assert_frame_equal(cut, pq.read_table(path, columns=["msisdn", "region", "day"]).to_pandas())


# --- a bundle's ``categorical``: text columns seen as pandas Categoricals -------------------------

_FORM = (
    "import pandas as pd\n"
    "def contributions(data, params):\n"
    "    t = data.cdr\n"
    "    r = t['region']\n"
    "    categorical = str(r.dtype) == 'category'\n"
    "    return pd.DataFrame({\n"
    "        'msisdn': [int(t['msisdn'].iloc[0])],\n"
    "        'form': ['categorical' if categorical else str(r.dtype)],\n"
    "        'categories': [','.join(r.cat.categories) if categorical else ''],\n"
    "        'calls': [int((t['event'] == 'call').sum())],\n"
    "        'north': [int((r == 'north').sum())],\n"
    "    })\n"
)
_TEXT = "def contributions(data, params):\n    return data.cdr[['msisdn', 'region', 'event']]\n"


def _form(runtime: Runtime, categorical: dict[str, tuple[str, ...]] | None) -> dict[str, object]:
    row = runtime.run(source=_FORM, entrypoint="contributions", params={}, categorical=categorical).iloc[0]
    return {k: (v if isinstance(v, str) else int(v)) for k, v in row.items() if k != "msisdn"}


def _expected(form: str) -> dict[str, object]:
    from tests.sandbox.sandbox_fixtures import known_cdr

    regions = known_cdr()["region"]
    return {
        "form": form,
        "categories": ",".join(sorted(set(regions))) if form == "categorical" else "",
        "calls": 4,
        "north": int((regions == "north").sum()),
    }


def test_a_run_sees_the_text_columns_it_asks_for_as_categoricals_and_the_next_run_as_text(runtime: Runtime) -> None:
    wanted = {"cdr": ("region",)}
    assert _form(runtime, wanted) == _expected("categorical")  # converted from the resident text, sorted categories
    assert _form(runtime, None) == _expected("str")             # the resident table is untouched
    assert _form(runtime, wanted) == _expected("categorical")   # the conversion is kept for the load


def test_a_runtime_holding_categoricals_shows_them_as_text_to_a_run_that_did_not_ask(cdr_path: Path) -> None:
    with Runtime(tables={"cdr": cdr_path}, limits=Limits(cpu_seconds=20, wall_seconds=30),
                 read={"cdr": ("msisdn", "region", "event")}, categorical={"cdr": ("region", "event")}) as coded, \
         Runtime(tables={"cdr": cdr_path}, limits=Limits(cpu_seconds=20, wall_seconds=30)) as text:
        assert _form(coded, {"cdr": ("region",)}) == _expected("categorical")
        assert _form(coded, None) == _expected("str")
        import pandas as pd

        # the text a run gets back from held codes is the text a plain load gives, value for value
        pd.testing.assert_frame_equal(
            coded.run(source=_TEXT, entrypoint="contributions", params={}),
            text.run(source=_TEXT, entrypoint="contributions", params={}),
        )
        coded.reload(tables={"cdr": cdr_path}, read={"cdr": ("msisdn", "region", "event")},
                     categorical={"cdr": ("region",)})
        assert _form(coded, {"cdr": ("region",)}) == _expected("categorical")
        assert _form(coded, None) == _expected("str")
