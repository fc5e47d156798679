"""Each reference algorithm through the real sandbox and release gate (the path
`opal algo test` and the worker share), against ground truth computed
independently with plain pandas on the raw synthetic world.

Bounds: discrete Laplace with scale b exceeds 25 b with probability e^-25 per
cell, so `BAND = 25 b` keeps a false failure below 1e-8 over all cells here.
The released table lists every cell of the public domain; a cell whose true
count is below min_units_per_cell - BAND cannot be released; one above
min_units_per_cell + BAND cannot be suppressed. Cells with no subscriber are
listed too (their value is noise around 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from opal.data import Shock, synthesize
from opal.devloop import test_bundle as released_by_platform

ALGORITHMS = Path(__file__).resolve().parents[2] / "algorithms"
SHOCK = Shock(day=7, region="Cendra", share=0.3)
NIGHT = [20, 21, 22, 23, 0, 1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, dict]:
    out = tmp_path_factory.mktemp("world") / "cdr.parquet"
    summary = synthesize(out, subscribers=20_000, days=14, seed=3, shock=SHOCK)
    return out, pd.read_parquet(out), json.loads(summary.ground_truth_path.read_text())


def home(cdr: pd.DataFrame, first: int, last: int) -> pd.Series:
    window = cdr[(cdr.day >= first) & (cdr.day <= last)]
    night = window[window.timestamp.dt.hour.isin(NIGHT)]
    return pd.crosstab(night.msisdn, night.region).idxmax(axis=1)


FULL: dict[tuple[str, str], pd.DataFrame] = {}


def release(path: Path, name: str, params: dict, epsilon: float = 1.0) -> tuple[pd.DataFrame, dict]:
    """The released (not suppressed) cells; the whole table is kept in FULL."""
    result = released_by_platform(ALGORITHMS / name, dataset=path, params=params, epsilon=epsilon)
    table = pd.DataFrame(result["table"]["rows"], columns=result["table"]["columns"])
    FULL[(name, json.dumps(params, sort_keys=True))] = table
    return table[~table["suppressed"]].reset_index(drop=True), result["mechanism"]


def check_counts(table: pd.DataFrame, truth: pd.Series, mechanism: dict, groups: list[str]) -> None:
    band = 25 * mechanism["count"]["scale"]
    threshold = mechanism["min_units_per_cell"]
    got = table.set_index(groups)["count"].astype(float)
    true = truth.reindex(got.index, fill_value=0)
    assert ((got - true).abs() <= band).all()
    # suppression is exactly the cells far below the minimum (allowing the noise band)
    assert not (true < threshold - band).any()
    must = truth[truth > threshold + band]
    assert must.index.isin(got.index).all()


def test_population_density(world) -> None:  # type: ignore[no-untyped-def]
    path, cdr, _ = world
    table, mech = release(path, "population_density", {"start_day": 0, "end_day": 6})
    window = cdr[cdr.day.between(0, 6)]
    truth = window.groupby(["region", "day"]).msisdn.nunique()
    check_counts(table, truth, mech, ["region", "day"])
    assert len(table) >= 0.8 * len(truth)


def test_home_location(world) -> None:  # type: ignore[no-untyped-def]
    path, cdr, _ = world
    table, mech = release(path, "home_location", {"start_day": 0, "end_day": 6})
    truth = home(cdr, 0, 6).value_counts().rename_axis("home_region")
    check_counts(table, truth, mech, ["home_region"])
    assert set(table.home_region) == set(truth.index)   # every region is large at m = 1


def test_od_matrix(world) -> None:  # type: ignore[no-untyped-def]
    path, cdr, truth_file = world
    params = {"before_start_day": 0, "before_end_day": 6, "after_start_day": 7, "after_end_day": 13}
    table, mech = release(path, "od_matrix", params)
    both = pd.concat([home(cdr, 0, 6).rename("origin"), home(cdr, 7, 13).rename("destination")], axis=1, join="inner")
    moved = both[both.origin != both.destination]
    truth = moved.groupby(["origin", "destination"]).size()
    check_counts(table, truth, mech, ["origin", "destination"])
    flows = table[table.origin == SHOCK.region].sort_values("count", ascending=False)
    top = sorted(truth_file["destinations"], key=truth_file["destinations"].get, reverse=True)
    assert flows.destination.iloc[0] == top[0]


def test_displacement_recovers_the_injected_shock(world) -> None:  # type: ignore[no-untyped-def]
    path, cdr, truth_file = world
    params = {"origin_region": SHOCK.region, "shock_day": SHOCK.day, "baseline_days": 7, "days_before": 2, "days_after": 4}
    table, mech = release(path, "displacement", params)
    residents = home(cdr, 0, 6)
    residents = set(residents[residents == SHOCK.region].index)
    rows = []
    for day in range(SHOCK.day - 2, SHOCK.day + 5):
        where = home(cdr, day, day)
        where = where[where.index.isin(residents)]
        rows.append(where.value_counts().rename_axis("destination").to_frame("n").assign(days_since_shock=day - SHOCK.day))
    truth = pd.concat(rows).reset_index().set_index(["destination", "days_since_shock"])["n"]
    check_counts(table, truth, mech, ["destination", "days_since_shock"])
    # the released tables recover the shock: the main destination, and (with destinations
    # collapsed into "elsewhere", so small ones are not suppressed) the share moved within 5 points
    collapsed, _ = release(path, "displacement", {**params, "collapse_moved": True})
    two = collapsed[collapsed.destination.isin([SHOCK.region, "elsewhere"])]
    after = two[two.days_since_shock.between(1, 4)].pivot(index="days_since_shock", columns="destination", values="count")
    share_moved = float((after["elsewhere"] / after.sum(axis=1)).mean())
    assert abs(share_moved - truth_file["moved_share"]) <= 0.05
    before = two[two.days_since_shock.between(-2, -1)].set_index("destination")["count"]
    # nobody had moved before the shock: "elsewhere" is noise around 0 (25 scales)
    assert (before.get("elsewhere", pd.Series(dtype=float)) <= 25 * mech["count"]["scale"]).all()
    assert (before[SHOCK.region] > 25 * mech["count"]["scale"]).all()
    away = table[table.destination != SHOCK.region].groupby("destination")["count"].sum()
    top = sorted(truth_file["destinations"], key=truth_file["destinations"].get, reverse=True)
    assert away.idxmax() == top[0]


def test_call_volume_means(world) -> None:  # type: ignore[no-untyped-def]
    path, cdr, _ = world
    table, mech = release(path, "call_volume", {"start_day": 0, "end_day": 6})
    calls = cdr[(cdr.event == "call") & cdr.day.between(0, 6)]
    per_caller = calls.groupby(["region", "day", "msisdn"]).duration_s.sum().clip(0, 1800)
    truth = per_caller.groupby(["region", "day"]).mean()
    units = per_caller.groupby(["region", "day"]).size()
    got = table.set_index(["region", "day"])["mean"].astype(float)
    got = got[got.index.isin(truth.index)]  # cells outside the window hold noise only
    assert len(got) > 0
    assert ((got >= 0) & (got <= 1800)).all()
    # the noisy sum has scale s, divided by a noisy count near the true one
    s, b = mech["mean"]["scale"], mech["count"]["scale"]
    n = units.reindex(got.index)
    sound = (25 * s / (n - 25 * b)).where(n > 25 * b, float("inf"))
    assert ((got - truth.reindex(got.index)).abs() <= sound).all()
    typical = (got - truth.reindex(got.index)).abs().median()
    assert typical < 4 * s * 0.6931 / n.median()          # P(fail) < 2^-(4·count/2), negligible


def test_unique_visitors(world) -> None:  # type: ignore[no-untyped-def]
    path, cdr, _ = world
    table, mech = release(path, "unique_visitors", {"start_day": 0, "end_day": 6})
    homes = home(cdr, 0, 6)
    window = cdr[cdr.day <= 6]
    seen = window[["msisdn", "region"]].drop_duplicates()
    seen = seen[seen.msisdn.isin(homes.index)]
    seen = seen[seen.region.values != homes.reindex(seen.msisdn).values]
    truth = seen.groupby("region").msisdn.nunique()
    check_counts(table, truth, mech, ["region"])
