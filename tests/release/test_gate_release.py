"""Exact behaviour of the release gate on known inputs, where noise cannot
change the outcome (each test states why), and its refusals.

Noise-dependent outcomes are only asserted when the probability of a false
failure is below 1e-6; the bound is computed and checked in the test itself.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from opal.errors import LimitExceeded, ReleaseRefused
from opal.release import CellDecision, PrivacySpec, Release, ReleasePolicy, release
from opal.release.noise import discrete_laplace_tail

COUNT = PrivacySpec(unit="msisdn", aggregation="count", max_groups_per_unit=1)
POLICY = ReleasePolicy()


def cells(sizes: dict[str, int], *, rows_per_unit: int = 1, start: int = 1000) -> pd.DataFrame:
    """Contributions where cell ``region=k`` holds ``sizes[k]`` distinct units."""
    frames, uid = [], start
    for region, n in sizes.items():
        ids = np.repeat(np.arange(uid, uid + n, dtype=np.int64), rows_per_unit)
        frames.append(pd.DataFrame({"msisdn": ids, "region": region}))
        uid += n
    return pd.concat(frames, ignore_index=True)


def units_of(df: pd.DataFrame) -> pd.Series:
    return df["msisdn"].drop_duplicates()


def p_wrong(release_: Release, sizes: dict[str, int]) -> float:
    """Probability that some cell lands on the wrong side of the threshold."""
    scale, tau = release_.mechanism["count"]["scale"], release_.mechanism["threshold"]
    p = 0.0
    for n in sizes.values():
        if n >= tau:
            p += discrete_laplace_tail(scale, n - tau + 1)  # noisy < tau
        else:
            p += discrete_laplace_tail(scale, tau - n)  # noisy >= tau
    return p


# --- suppression --------------------------------------------------------------


def test_tiny_cell_is_suppressed_without_its_key() -> None:
    sizes = {"north": 3, "south": 400}
    df = cells(sizes, rows_per_unit=4)
    r = release(df, privacy=COUNT, policy=POLICY, epsilon=1.0, known_units=units_of(df))
    assert p_wrong(r, sizes) < 1e-6
    assert list(r.table.columns) == ["region", "count"]
    assert r.table["region"].tolist() == ["south"]
    assert r.cells_released == 1 and r.cells_suppressed == 1
    assert r.decisions[0] == CellDecision(
        released=True, reason="released", group={"region": "south"}
    )
    assert r.decisions[1] == CellDecision(
        released=False,
        reason=f"noisy unit count below the release threshold of {r.mechanism['threshold']}",
        group=None,
    )
    assert "north" not in json.dumps(r.to_dict())


def test_threshold_is_at_least_the_policy_minimum_and_rises_with_noise() -> None:
    df = cells({"a": 500})
    r1 = release(df, privacy=COUNT, policy=POLICY, epsilon=1.0)
    assert r1.mechanism["threshold"] >= POLICY.min_units_per_cell
    wide = PrivacySpec(unit="msisdn", max_groups_per_unit=30)
    r30 = release(df, privacy=wide, policy=POLICY, epsilon=1.0)
    # 30 cells a unit: 30x the noise scale, so a higher bar for a key to appear.
    assert r30.mechanism["count"]["scale"] == pytest.approx(30.0)
    assert r30.mechanism["threshold"] > 20 * r1.mechanism["threshold"]
    assert r30.delta <= POLICY.delta and r1.delta <= POLICY.delta


def test_released_table_is_sorted_by_group_columns_and_counts_are_ints() -> None:
    sizes = {"d": 300, "b": 300, "c": 300, "a": 300}
    df = cells(sizes)
    r = release(df, privacy=COUNT, policy=POLICY, epsilon=1.0)
    assert p_wrong(r, sizes) < 1e-6
    assert r.table["region"].tolist() == ["a", "b", "c", "d"]
    assert r.table["count"].dtype == np.int64
    assert [d.group for d in r.decisions] == [{"region": k} for k in "abcd"]


def test_several_group_columns_and_no_group_column() -> None:
    df = cells({"a": 300, "b": 300})
    df["day"] = np.where(df.index % 2 == 0, 1, 2)
    spec = PrivacySpec(unit="msisdn", max_groups_per_unit=1)
    r = release(df, privacy=spec, policy=POLICY, epsilon=1.0)
    assert list(r.table.columns) == ["region", "day", "count"]
    assert r.table[["region", "day"]].values.tolist() == [["a", 1], ["a", 2], ["b", 1], ["b", 2]]
    total = release(df[["msisdn"]], privacy=spec, policy=POLICY, epsilon=1.0)
    assert list(total.table.columns) == ["count"] and len(total.table) == 1
    assert total.decisions[0].group == {}


def test_empty_contributions_release_an_empty_table() -> None:
    df = pd.DataFrame({"msisdn": pd.Series([], dtype=np.int64), "region": pd.Series([], dtype=str)})
    r = release(df, privacy=COUNT, policy=POLICY, epsilon=1.0)
    assert list(r.table.columns) == ["region", "count"] and len(r.table) == 0
    assert r.decisions == () and r.cells_suppressed == 0


# --- output limits ------------------------------------------------------------


def test_more_cells_than_max_cells_is_a_limit_error() -> None:
    sizes = {"a": 300, "b": 300, "c": 300}
    df = cells(sizes)
    policy = ReleasePolicy(max_cells=2)
    probe = release(df, privacy=COUNT, policy=POLICY, epsilon=1.0)
    assert p_wrong(probe, sizes) < 1e-6
    with pytest.raises(LimitExceeded) as exc:
        release(df, privacy=COUNT, policy=policy, epsilon=1.0)
    assert exc.value.exit_code == 5
    assert str(exc.value) == (
        "release has 3 cells, more than the policy limit max_cells = 2; group by fewer or "
        "coarser columns, or ask the operator to raise max_cells"
    )


# --- epsilon guards -----------------------------------------------------------


@pytest.mark.parametrize("eps", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_epsilon_must_be_positive_and_finite(eps: float) -> None:
    with pytest.raises(ReleaseRefused) as exc:
        release(cells({"a": 20}), privacy=COUNT, policy=POLICY, epsilon=eps)
    assert exc.value.exit_code == 3
    assert str(exc.value) == (
        f"epsilon must be a positive finite number, found {float(eps)!r}; pass e.g. --epsilon 0.5"
    )


def test_epsilon_must_be_a_number() -> None:
    for bad in (True, "1.0", None):
        with pytest.raises(ReleaseRefused, match="epsilon must be a positive number"):
            release(cells({"a": 20}), privacy=COUNT, policy=POLICY, epsilon=bad)  # type: ignore[arg-type]


def test_epsilon_over_the_per_run_cap_is_refused() -> None:
    with pytest.raises(ReleaseRefused) as exc:
        release(cells({"a": 20}), privacy=COUNT, policy=POLICY, epsilon=1.5)
    assert str(exc.value) == (
        "epsilon 1.5 is over the per-run cap max_epsilon_per_run = 1; ask for at most 1"
    )


# --- contribution schema ------------------------------------------------------

SUM = PrivacySpec(unit="msisdn", aggregation="sum", value_bounds=(0.0, 10.0))


def refused(df: object, privacy: PrivacySpec = COUNT, known: object = None) -> str:
    with pytest.raises(ReleaseRefused) as exc:
        release(df, privacy=privacy, policy=POLICY, epsilon=1.0, known_units=known)  # type: ignore[arg-type]
    assert exc.value.exit_code == 3
    return str(exc.value)


def test_contributions_must_be_a_dataframe() -> None:
    assert refused([[1, "a"]]) == (
        "contributions must be a pandas DataFrame [unit, group columns…, value], found list; "
        "return a DataFrame from the entrypoint"
    )


def test_missing_unit_column_is_refused() -> None:
    assert refused(pd.DataFrame({"region": ["a"]})) == (
        "contributions have no privacy-unit column 'msisdn' (declared as [privacy] unit); "
        "return it with the dataset's own unit ids"
    )


def test_value_column_in_a_count_is_refused() -> None:
    df = pd.DataFrame({"msisdn": [1], "region": ["a"], "value": [3.0]})
    assert refused(df) == (
        "contributions have a value column 'value', but aggregation 'count' takes no value; "
        'drop it, or declare aggregation = "sum" or "mean"'
    )


def test_missing_value_column_in_a_sum_is_refused() -> None:
    df = pd.DataFrame({"msisdn": [1], "region": ["a"]})
    assert refused(df, SUM) == (
        "contributions have no value column 'value', required for aggregation 'sum'; "
        "return it, or set [privacy] value_column"
    )


def test_undeclared_and_missing_declared_columns_are_refused() -> None:
    spec = PrivacySpec(unit="msisdn", groups=("region",))
    df = pd.DataFrame({"msisdn": [1], "region": ["a"], "imei": [7]})
    assert refused(df, spec) == (
        "contributions have undeclared column(s) 'imei'; allowed: 'msisdn', 'region'; "
        "drop them or declare them in [privacy] groups"
    )
    assert refused(pd.DataFrame({"msisdn": [1]}), spec) == (
        "contributions lack declared group column(s) 'region'; return them or fix [privacy] groups"
    )


def test_group_column_named_like_the_output_is_refused() -> None:
    df = pd.DataFrame({"msisdn": [1], "count": [2]})
    assert refused(df) == "group column 'count' clashes with the released column 'count'; rename it"


def test_duplicate_and_non_string_column_names_are_refused() -> None:
    df = pd.DataFrame([[1, "a", "b"]], columns=["msisdn", "region", "region"])
    assert refused(df) == (
        "contributions have duplicate column name(s) 'region'; give every column a distinct name"
    )
    df = pd.DataFrame([[1, "a"]], columns=["msisdn", 0])
    assert refused(df) == (
        "contributions column names must be strings; rename the columns in the algorithm"
    )


def test_non_numeric_and_non_finite_values_are_refused() -> None:
    df = pd.DataFrame({"msisdn": [1, 2], "region": ["a", "a"], "value": ["x", "y"]})
    assert refused(df, SUM).startswith("value column 'value' must be numeric, found dtype ")
    for bad in (np.nan, np.inf, -np.inf):
        df = pd.DataFrame({"msisdn": [1, 2], "region": ["a", "a"], "value": [1.0, bad]})
        assert refused(df, SUM) == (
            "value column 'value' holds non-finite values (NaN or infinity); "
            "drop or fill them in the algorithm"
        )


def test_missing_units_and_groups_are_refused() -> None:
    df = pd.DataFrame({"msisdn": [1.0, np.nan], "region": ["a", "a"]})
    assert refused(df) == (
        "privacy-unit column 'msisdn' holds missing values; every contribution needs a unit"
    )
    df = pd.DataFrame({"msisdn": [1, 2], "region": ["a", None]})
    assert refused(df) == (
        "group column 'region' holds missing values; fill them (e.g. with \"unknown\") "
        "in the algorithm"
    )
    df = pd.DataFrame({"msisdn": [1, 2], "x": [1.0, np.inf]})
    assert refused(df) == "group column 'x' holds infinite values; fix them in the algorithm"
    df = pd.DataFrame({"msisdn": [1, 2], "x": [[1], [2]]})
    assert refused(df) == (
        "group column 'x' holds values that cannot be grouped (lists, dicts…); return scalars"
    )


def test_invented_units_are_refused_without_naming_them() -> None:
    df = cells({"a": 30})
    known = units_of(df)
    forged = pd.concat([df, pd.DataFrame({"msisdn": [987654321], "region": ["a"]})])
    msg = refused(forged, known=known)
    assert msg == (
        "privacy-unit column 'msisdn' holds values that are not units of the dataset; "
        "return the dataset's own 'msisdn' values, unchanged"
    )
    assert "987654321" not in msg
    # The same ids as strings are not the dataset's units either.
    assert refused(df.assign(msisdn=df.msisdn.astype(str)), known=known) == msg
    # String unit ids work when the dataset's are strings.
    as_str = df.assign(msisdn=df.msisdn.astype(str))
    r = release(as_str, privacy=COUNT, policy=POLICY, epsilon=1.0, known_units=units_of(as_str))
    assert r.mechanism["units_verified"] is True


# --- the record ---------------------------------------------------------------


def test_release_round_trips_through_json() -> None:
    df = cells({"a": 300, "b": 2})
    df["value"] = 4.0
    spec = PrivacySpec(unit="msisdn", aggregation="mean", value_bounds=(0.0, 10.0))
    r = release(df, privacy=spec, policy=POLICY, epsilon=1.0)
    data = json.loads(json.dumps(r.to_dict()))
    back = Release.from_dict(data)
    assert back.to_dict() == r.to_dict()
    assert back.decisions == r.decisions
    assert back.table.columns.tolist() == ["region", "mean", "total"]


def test_analyst_view_leaves_out_the_suppressed_count() -> None:
    sizes = {"a": 300, "b": 2}
    r = release(cells(sizes), privacy=COUNT, policy=POLICY, epsilon=1.0)
    assert p_wrong(r, sizes) < 1e-6
    view = r.analyst_view()
    assert "cells_suppressed" not in view
    assert all(d["released"] for d in view["decisions"])
    assert view["table"] == {"columns": ["region", "count"], "rows": [["a", r.table["count"][0]]]}


def test_mechanism_states_the_epsilon_split_and_scales() -> None:
    df = cells({"a": 2000})
    df["value"] = 1.0
    spec = PrivacySpec(
        unit="msisdn", aggregation="sum", value_bounds=(-2.0, 8.0), max_groups_per_unit=3
    )
    r = release(df, privacy=spec, policy=POLICY, epsilon=1.0)
    m = r.mechanism
    assert m["epsilon_split"] == {"count": 0.5, "sum": 0.5}
    assert m["count"]["scale"] == pytest.approx(3 / 0.5)
    assert m["sum"]["mechanism"] == "laplace"
    assert m["sum"]["sensitivity"] == {"l1": 3 * 8.0}
    assert m["sum"]["scale"] == pytest.approx(3 * 8.0 / 0.5)
    assert m["sensitivity"]["sum_l1"] == 24.0 and m["max_groups_per_unit"] == 3
    assert r.epsilon == 1.0 and r.delta <= POLICY.delta

    gauss = ReleasePolicy(sum_mechanism="gaussian")
    g = release(df, privacy=spec, policy=gauss, epsilon=1.0).mechanism
    assert g["sum"]["mechanism"] == "gaussian"
    assert g["sum"]["sensitivity"] == {"l2": pytest.approx(math.sqrt(3) * 8.0)}
    assert g["sum"]["delta"] == pytest.approx(POLICY.delta / 2)
    assert g["count"]["delta"] <= POLICY.delta / 2
    assert g["delta"] <= POLICY.delta

    mean = PrivacySpec(unit="msisdn", aggregation="mean", value_bounds=(-2.0, 8.0))
    mm = release(df, privacy=mean, policy=POLICY, epsilon=1.0).mechanism
    # The mean noises sum(value - mid): half-width 5, not max |bound| 8.
    assert mm["mean"]["sensitivity"] == {"l1": 5.0}


def test_sums_and_means_are_post_processed_within_the_bounds() -> None:
    # Cells of 2 000 units: far above any threshold here (see p_wrong).
    sizes = {f"r{i}": 2000 for i in range(20)}
    df = cells(sizes)
    df["value"] = np.where(df.index % 2 == 0, 0.01, 99.99)
    spec = PrivacySpec(unit="msisdn", aggregation="sum", value_bounds=(0.0, 100.0))
    r = release(df, privacy=spec, policy=POLICY, epsilon=1.0)
    assert p_wrong(r, sizes) < 1e-6
    s = r.table["sum"]
    assert len(s) == 20 and (s >= 0).all() and (s == s.round(2)).all()
    # All-zero cells fail the p% rule, as in ACRO (zeros are disclosive).
    zeros = df.assign(value=0.0)
    assert release(zeros, privacy=spec, policy=POLICY, epsilon=1.0).cells_released == 0
    spec = PrivacySpec(unit="msisdn", aggregation="mean", value_bounds=(0.0, 100.0))
    edge = df.assign(value=100.0)
    mean = release(edge, privacy=spec, policy=POLICY, epsilon=1.0).table["mean"]
    assert len(mean) == 20 and mean.between(0.0, 100.0).all()


def test_policy_extensions_round_trip() -> None:
    p = ReleasePolicy(value_decimals=0, delta=1e-6)
    assert ReleasePolicy.from_dict(p.to_dict()) == p
    s = PrivacySpec.from_dict({"unit": "msisdn", "groups": ["region", "day"]})
    assert s.groups == ("region", "day")
    assert PrivacySpec.from_dict(s.to_dict()) == s


def test_mean_release_also_carries_the_total_as_post_processing() -> None:
    """A mean cell releases mean and total from the same two noisy measurements:
    total / noisy count reproduces the unclamped mean, and no extra epsilon is spent."""
    rows = [{"msisdn": i, "region": "R", "value": 100.0} for i in range(4000)]
    spec = PrivacySpec(unit="msisdn", aggregation="mean", value_bounds=(0.0, 200.0))
    out = release(pd.DataFrame(rows), privacy=spec, policy=ReleasePolicy(), epsilon=1.0)
    assert out.table.columns.tolist() == ["region", "mean", "total"]
    assert out.epsilon == 1.0 and out.mechanism["epsilon_split"] == {"count": 0.5, "mean": 0.5}
    cell = out.table.iloc[0]
    # true total 400 000; count noise (scale 2) times mid 100 plus sum noise (scale 200):
    # 25 scales each bound a false failure below 1e-10
    assert abs(cell["total"] - 400_000) <= 25 * 2 * 100 + 25 * 200
    assert abs(cell["mean"] - 100.0) <= 5.0
