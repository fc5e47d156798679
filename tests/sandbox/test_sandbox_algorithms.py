"""Legitimate pandas algorithms keep working, with exact contributions."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest
from sandbox_fixtures import SECRET_MSISDN, SECRET_REGION, known_cdr

from opal.sandbox import Runtime

S = SECRET_MSISDN


def run(runtime: Runtime, body: str, params: dict | None = None) -> pd.DataFrame:
    source = "import numpy as np\nimport pandas as pd\n" + textwrap.dedent(body)
    return runtime.run(source=source, entrypoint="contributions", params=params or {})


def rows(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame.itertuples(index=False, name=None)]


def test_filter_and_drop_duplicates(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        def contributions(data, params):
            cdr = data.cdr
            seen = cdr[cdr.day.between(params["start_day"], params["end_day"])]
            return seen[["msisdn", "region", "day"]].drop_duplicates()
        """,
        {"start_day": 0, "end_day": 1},
    )
    assert list(out.columns) == ["msisdn", "region", "day"]
    assert rows(out) == [(1001, "north", 0), (1001, "south", 0), (1002, "north", 1), (1003, "east", 1)]


def test_groupby_agg_with_reducer_names(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        def contributions(data, params):
            calls = data.cdr[data.cdr["event"] == "call"]
            g = calls.groupby(["msisdn", "region"]).agg(
                total=("duration_s", "sum"), n=("duration_s", "count"), longest=("duration_s", np.max)
            )
            return g.reset_index()
        """,
    )
    assert rows(out) == [(1001, "north", 60, 1, 60), (1003, "east", 150, 2, 120), (S, SECRET_REGION, 999, 1, 999)]


def test_groupby_agg_list_and_dict_of_reducers(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        def contributions(data, params):
            g = data.cdr.groupby("msisdn").agg({"duration_s": ["sum", "max"], "day": "nunique"})
            g.columns = ["dur_sum", "dur_max", "days"]
            return g.reset_index()
        """,
    )
    assert rows(out) == [
        (1001, 60, 60, 2), (1002, 0, 0, 1), (1003, 150, 120, 2), (1004, 0, 0, 1), (S, 999, 999, 1)
    ]


def test_merge_with_idxmax_of_groupby(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        def contributions(data, params):
            cdr = data.cdr
            counts = cdr.groupby(["msisdn", "cell_id"]).size().reset_index(name="n")
            home = counts.loc[counts.groupby("msisdn")["n"].idxmax()]
            cells = cdr[["cell_id", "region"]].drop_duplicates()
            out = home.merge(cells, on="cell_id", how="left")
            return out[["msisdn", "cell_id", "region"]].sort_values("msisdn").reset_index(drop=True)
        """,
    )
    assert rows(out) == [
        (1001, 11, "north"), (1002, 11, "north"), (1003, 13, "east"), (1004, 14, "north"), (S, 15, SECRET_REGION)
    ]


def test_value_counts(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        def contributions(data, params):
            vc = data.cdr["msisdn"].value_counts().sort_index()
            return vc.rename_axis("msisdn").reset_index(name="events")
        """,
    )
    assert rows(out) == [(1001, 3), (1002, 1), (1003, 2), (1004, 1), (S, 1)]


def test_dt_accessors(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        def contributions(data, params):
            cdr = data.cdr[data.cdr.day <= 1]
            ts = cdr["timestamp"]
            out = cdr.assign(weekday=ts.dt.dayofweek, hour=ts.dt.hour, date=ts.dt.strftime("%Y-%m-%d"))
            return out[["msisdn", "weekday", "hour", "date"]].drop_duplicates()
        """,
    )
    assert rows(out) == [
        (1001, 0, 8, "2024-03-04"), (1001, 0, 19, "2024-03-04"), (1002, 1, 9, "2024-03-05"), (1003, 1, 23, "2024-03-05")
    ]


def test_sort_values_and_assign(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        def contributions(data, params):
            cdr = data.cdr.assign(minutes=data.cdr.duration_s / 60)
            top = cdr.sort_values(["minutes", "msisdn"], ascending=[False, True]).head(3)
            return top[["msisdn", "minutes"]].reset_index(drop=True)
        """,
    )
    assert rows(out) == [(S, 999 / 60), (1003, 2.0), (1001, 1.0)]


def test_apply_transform_map_and_str(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        def long_call(seconds):
            return seconds >= 60

        def contributions(data, params):
            cdr = data.cdr.copy()
            cdr["long"] = cdr["duration_s"].apply(long_call)
            cdr["share"] = cdr["duration_s"] / cdr.groupby("msisdn")["duration_s"].transform("sum").replace(0, 1)
            cdr["kind"] = cdr["event"].map({"call": "voice", "sms": "text", "data": "data"})
            cdr["area"] = cdr["region"].str.upper().str.slice(0, 1)
            cdr.loc[cdr["area"] == "Z", "area"] = "?"
            keep = cdr[cdr["msisdn"] != params["exclude"]]
            return keep[["msisdn", "kind", "area", "long", "share"]].head(4)
        """,
        {"exclude": S},
    )
    assert rows(out) == [
        (1001, "voice", "N", True, 1.0),
        (1001, "text", "S", False, 0.0),
        (1002, "data", "N", False, 0.0),
        (1003, "voice", "E", True, 0.8),
    ]


def test_loops_comprehensions_and_itertuples(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        import math

        def contributions(data, params):
            records = []
            for row in data.cdr.itertuples():
                if row.duration_s > 0:
                    records.append({"msisdn": row.msisdn, "log_dur": round(math.log10(row.duration_s), 3)})
            seen = sorted({r["msisdn"] for r in records})
            total = sum(r["log_dur"] for r in records)
            frame = pd.DataFrame(records)
            frame["n"] = len(seen)
            frame["total"] = round(total, 3)
            return frame
        """,
    )
    assert rows(out) == [
        (1001, 1.778, 3, 8.334), (1003, 2.079, 3, 8.334), (1003, 1.477, 3, 8.334), (S, 3.0, 3, 8.334)
    ]


def test_pivot_table_and_crosstab(runtime: Runtime) -> None:
    out = run(
        runtime,
        """
        def contributions(data, params):
            p = pd.pivot_table(data.cdr, index="msisdn", columns="event", values="duration_s",
                               aggfunc="sum", fill_value=0)
            p.columns = [str(c) for c in p.columns]
            ct = pd.crosstab(data.cdr["msisdn"], data.cdr["event"])
            p["events"] = ct.sum(axis=1)
            return p.reset_index()
        """,
    )
    assert list(out.columns) == ["msisdn", "call", "data", "sms", "events"]
    assert rows(out)[0] == (1001, 60, 0, 0, 3)


def test_result_matches_direct_pandas(runtime: Runtime) -> None:
    body = """
    def contributions(data, params):
        cdr = data.cdr
        g = cdr.groupby(["region", "day"])["msisdn"].nunique().reset_index(name="subscribers")
        return g.sort_values(["region", "day"]).reset_index(drop=True)
    """
    out = run(runtime, body)
    cdr = known_cdr()
    expected = (
        cdr.groupby(["region", "day"])["msisdn"].nunique().reset_index(name="subscribers")
        .sort_values(["region", "day"]).reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)


def test_jobs_do_not_share_mutable_state(runtime: Runtime) -> None:
    mutate = """
    def contributions(data, params):
        s = data.cdr["duration_s"]
        s.iloc[0] = 123456
        own = data.cdr.copy()
        own["duration_s"] = 0
        return own[["msisdn", "duration_s"]]
    """
    out = run(runtime, mutate)
    assert set(out["duration_s"]) == {0}
    check = """
    def contributions(data, params):
        return data.cdr[["msisdn", "duration_s"]].head(1)
    """
    assert rows(run(runtime, check)) == [(1001, 60)]


@pytest.mark.parametrize("name", ["empty_result", "params_types"])
def test_edge_results(runtime: Runtime, name: str) -> None:
    if name == "empty_result":
        out = run(runtime, """
        def contributions(data, params):
            return data.cdr[data.cdr.day > 100][["msisdn", "day"]]
        """)
        assert len(out) == 0 and list(out.columns) == ["msisdn", "day"]
    else:
        out = run(runtime, """
        def contributions(data, params):
            keep = data.cdr[data.cdr.region.isin(params["regions"]) & (data.cdr.day >= params["min_day"])]
            return keep[["msisdn"]].drop_duplicates()
        """, {"regions": ["east"], "min_day": 2})
        assert rows(out) == [(1003,)]


def test_named_index_becomes_columns(runtime: Runtime) -> None:
    out = run(runtime, """
    def contributions(data, params):
        return data.cdr.groupby(["msisdn", "region"]).size().to_frame("events")
    """)
    assert list(out.columns) == ["msisdn", "region", "events"]
    assert rows(out)[0] == (1001, "north", 2)


def test_options_forwarded_to_a_named_reducer_pass(runtime: Runtime) -> None:
    source = """
def contributions(data, params):
    cdr = data.cdr
    out = cdr[["msisdn", "region"]].copy()
    out["r"] = cdr.groupby("region")["duration_s"].transform("rank", method="dense")
    out["q"] = cdr.groupby("region")["duration_s"].transform("quantile", 0.5, interpolation="nearest")
    out["n"] = cdr.groupby("region").agg(n=("msisdn", "nunique"))["n"].reindex(cdr["region"]).to_numpy()
    return out
"""
    out = runtime.run(source=source, entrypoint="contributions", params={})
    assert out["r"].tolist() == [2.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert out["n"].tolist() == [3, 1, 3, 1, 1, 3, 3, 1]


def test_try_except_finally_still_work(runtime: Runtime) -> None:
    source = """
def pick(frame, column):
    try:
        return frame[column]
    except KeyError as missing:
        return frame["region"]
    finally:
        frame = None


def contributions(data, params):
    out = data.cdr[["msisdn"]].copy()
    out["group"] = pick(data.cdr, "no_such_column").to_numpy()
    return out
"""
    out = runtime.run(source=source, entrypoint="contributions", params={})
    assert out["group"].tolist()[:3] == ["north", "south", "north"]
