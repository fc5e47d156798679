"""No clock inside the sandbox: every route from a string to a datetime
refuses 'now' and 'today' (a bundle that can read the date can behave while
it is reviewed and leak after a chosen day). Each route runs through the real
runtime and must end as a policy violation."""

from __future__ import annotations

import pytest

from opal.errors import PolicyViolation
from opal.sandbox import Runtime

# Each expression read the current time on plain pandas/numpy (checked below).
# `ts` is a datetime Series, `arr` a datetime64 array, `now` the word built at
# run time so no literal gives it away.
CLOCK_ROUTES = {
    "Timestamp": 'pd.Timestamp(now)',
    "Timestamp_today": 'pd.Timestamp("today")',
    "Timestamp_keyword": 'pd.Timestamp(ts_input=now)',
    "to_datetime_scalar": 'pd.to_datetime(now)',
    "to_datetime_list": 'pd.to_datetime(["today"])[0]',
    "to_datetime_format": 'pd.to_datetime([now], format="%Y-%m-%d")[0]',
    "to_datetime_series": 'pd.to_datetime(pd.Series(["today"])).iloc[0]',
    "DatetimeIndex": 'pd.DatetimeIndex([now])[0]',
    "DatetimeIndex_tz": 'pd.DatetimeIndex([now], tz="UTC")[0]',
    "Index_dtype": 'pd.Index([now], dtype="datetime64[ns]")[0]',
    "Series_dtype": 'pd.Series([now], dtype="datetime64[ns]").iloc[0]',
    "DataFrame_dtype": 'pd.DataFrame({"a": [now]}, dtype="datetime64[ns]")["a"].iloc[0]',
    "Series_astype": 'pd.Series([now]).astype("datetime64[s]").iloc[0]',
    "Series_astype_tz": 'pd.Series([now]).astype("datetime64[ns, UTC]").iloc[0]',
    "category_astype": 'pd.Series([now], dtype="category").astype("datetime64[ns]").iloc[0]',
    "DataFrame_astype_dict": 'pd.DataFrame({"a": [now]}).astype({"a": "datetime64[ns]"})["a"].iloc[0]',
    "Index_astype": 'pd.Index([now]).astype("datetime64[ns]")[0]',
    "to_numpy_dtype": 'pd.Series([now]).to_numpy(dtype="datetime64[s]")[0]',
    "date_range": 'pd.date_range(now, periods=1)[0]',
    "compare_operator": '(ts < now).iloc[0]',
    "compare_with_series": '(ts < pd.Series([now] * len(ts))).iloc[0]',
    "between": 'ts.between("2000", now).iloc[0]',
    "searchsorted": 'ts.searchsorted(now)',
    "clip": 'ts.clip(upper=now).iloc[0]',
    "fillna": 'pd.Series([pd.NaT, ts.iloc[0]]).fillna(now).iloc[0]',
    "where": 'ts.where(ts.isna(), now).iloc[0]',
    "replace": 'ts.replace(ts.iloc[0], now).iloc[0]',
    "series_setitem": 'assign(ts.copy(), now)',
    "loc_setitem": 'assign_loc(ts.copy(), now)',
    "truncate": 'len(naive.to_frame().set_index("timestamp").sort_index().truncate(after=now))',
    "grouper_origin": 'naive.to_frame().groupby(pd.Grouper(key="timestamp", freq="7h", origin=now)).size().index[0]',
    "resample_origin": 'naive.to_frame().resample("7h", on="timestamp", origin=now).size().index[0]',
    "to_datetime_origin": 'pd.to_datetime([1], unit="D", origin=now)[0]',
    "numpy_datetime64": 'np.datetime64(now)',
    "numpy_datetime64_upper": 'np.datetime64("NOW")',
    "numpy_datetime64_bytes": 'np.datetime64(now.encode())',
    "numpy_array": 'np.array([now], dtype="datetime64[s]")[0]',
    "numpy_array_nested": 'np.array([[now]], dtype="M8[s]")[0][0]',
    "numpy_asarray": 'np.asarray(["Today"], dtype="datetime64[D]")[0]',
    "numpy_full": 'np.full(1, now, dtype="datetime64[s]")[0]',
    "numpy_full_like": 'np.full_like(arr, now)[0]',
    "ndarray_astype": 'np.array([now]).astype("datetime64[s]")[0]',
    "ndarray_setitem": 'assign(arr.copy(), now)',
    "apply_parser": 'pd.Series([now]).apply(pd.Timestamp).iloc[0]',
    "map_parser": 'pd.Series([now]).map(np.datetime64).iloc[0]',
}

_TEMPLATE = '''
import numpy as np
import pandas as pd


def assign(target, value):
    target[0] = value
    return target[0]


def assign_loc(target, value):
    target.loc[0] = value
    return target.iloc[0]


def contributions(data, params):
    now = "n" + "ow"
    ts = data.cdr["timestamp"]
    naive = ts.dt.tz_localize(None)
    arr = naive.to_numpy()
    leaked = {expr}
    return data.cdr[["msisdn", "region"]].head(1)
'''


_OUTSIDE = """
import datetime, json, sys
import numpy as np
import pandas as pd
from sandbox_fixtures import known_cdr

routes = json.loads(sys.argv[1])
frame = known_cdr()


def assign(target, value):
    target[0] = value
    return target[0]


def assign_loc(target, value):
    target.loc[0] = value
    return target.iloc[0]


class Data:
    cdr = frame


naive = frame["timestamp"].dt.tz_localize(None)
names = dict(pd=pd, np=np, assign=assign, assign_loc=assign_loc, data=Data, now="now",
             ts=frame["timestamp"], naive=naive, arr=naive.to_numpy())
out = {}
for name, expr in routes.items():
    try:
        out[name] = repr(eval(expr, dict(names)))
    except Exception as exc:
        out[name] = "raised " + type(exc).__name__
print(json.dumps(out))
"""


def test_every_route_reads_the_clock_outside_the_sandbox() -> None:
    """The enumeration is not stale: on plain pandas/numpy (a fresh
    interpreter) each route returns the current time, or a truth value or
    count that compares the data with it."""
    import datetime
    import json
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run(
        [sys.executable, "-c", _OUTSIDE, json.dumps(CLOCK_ROUTES)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent,
    )
    results = json.loads(proc.stdout)
    this_year = str(datetime.datetime.now(datetime.UTC).year)
    # these show the clock through a comparison or a bin edge, not a printed year
    comparisons = {"compare_operator", "compare_with_series", "between", "searchsorted", "clip", "truncate",
                   "grouper_origin", "resample_origin"}
    quiet = [
        name for name, text in results.items()
        if text.startswith("raised") or (name not in comparisons and this_year not in text)
    ]
    assert quiet == [], f"routes that no longer read the clock: {quiet}"


@pytest.mark.parametrize("route", sorted(CLOCK_ROUTES))
def test_string_to_datetime_route_refuses_the_clock(runtime: Runtime, route: str) -> None:
    source = _TEMPLATE.replace("{expr}", CLOCK_ROUTES[route])
    with pytest.raises(PolicyViolation, match="the word now or today") as info:
        runtime.run(source=source, entrypoint="contributions", params={})
    assert info.value.exit_code == 4


def test_dates_without_the_clock_still_parse(runtime: Runtime) -> None:
    source = '''
import numpy as np
import pandas as pd


def contributions(data, params):
    cdr = data.cdr
    a = pd.to_datetime(cdr["timestamp"].astype(str), utc=True)
    b = pd.Timestamp("2024-03-05", tz="UTC")
    c = np.datetime64("2024-03-06")
    d = cdr[(a >= b) & (cdr["timestamp"] < "2024-03-07") & (a.dt.tz_localize(None) < c)]
    return d[["msisdn", "region"]]
'''
    out = runtime.run(source=source, entrypoint="contributions", params={})
    assert sorted(out["msisdn"].tolist()) == [1002, 1003]
