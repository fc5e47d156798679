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

from opal.errors import BadInputError, ReleaseRefused
from opal.release import CellDecision, PrivacySpec, Release, ReleasePolicy, release
from opal.release.noise import discrete_laplace_tail
from tests.release.release_fixtures import domains_of, spec

REGIONS = ("a", "b", "c", "d", "north", "south")
COUNT = spec({"region": REGIONS}, aggregation="count", max_groups_per_unit=1)
POLICY = ReleasePolicy()


def gate(df: object, privacy: PrivacySpec = COUNT, **kw: object) -> Release:
    kw.setdefault("policy", POLICY)
    kw.setdefault("epsilon", 1.0)
    return release(df, privacy=privacy, domains=domains_of(privacy), **kw)  # type: ignore[arg-type]


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
    """Probability that some cell lands on the wrong side of min_units_per_cell."""
    scale, tau = release_.mechanism["count"]["scale"], release_.mechanism["min_units_per_cell"]
    p = 0.0
    for region in REGIONS:
        n = sizes.get(region, 0)
        if n >= tau:
            p += discrete_laplace_tail(scale, n - tau + 1)  # noisy < tau
        else:
            p += discrete_laplace_tail(scale, tau - n)  # noisy >= tau
    return p


# --- one row per cell of the public domain -------------------------------------


def test_every_cell_of_the_domain_is_listed_and_small_ones_are_suppressed() -> None:
    sizes = {"north": 3, "south": 400}
    df = cells(sizes, rows_per_unit=4)
    r = gate(df, known_units=units_of(df), policy=ReleasePolicy(min_units_per_cell=25))
    assert p_wrong(r, sizes) < 1e-6
    assert list(r.table.columns) == [
        "region", "count", "suppressed", "noise_scale", "ci_low", "ci_high",
    ]
    assert r.table["region"].tolist() == list(REGIONS)
    assert r.table["suppressed"].tolist() == [True, True, True, True, True, False]
    assert r.cells_released == 1 and r.cells_suppressed == 5
    south = r.table.iloc[-1]
    assert south["ci_low"] <= south["count"] <= south["ci_high"]
    assert pd.isna(r.table["count"][0]) and pd.isna(r.table["ci_low"][0])
    assert r.decisions[-1] == CellDecision(released=True, reason="released", group={"region": "south"})
    assert r.decisions[4] == CellDecision(
        released=False, reason="noisy unit count below min_units_per_cell = 25", group={"region": "north"}
    )


def test_no_partition_selection_threshold_only_the_policy_minimum_on_the_noisy_count() -> None:
    # issue #14: a 76-subscriber cell at m = 30, ε = 1 was never released (threshold 704).
    wide = spec({"region": REGIONS}, max_groups_per_unit=30)
    sizes = {"a": 400}
    r = gate(cells(sizes), wide)
    assert r.mechanism["count"]["scale"] == pytest.approx(30.0)
    assert "threshold" not in r.mechanism and r.delta == 0.0
    assert r.mechanism["min_units_per_cell"] == 15
    # P(a 400-unit cell's noisy count < 15) at scale 30 is < 1e-5.
    assert discrete_laplace_tail(30.0, 400 - 15 + 1) < 1e-5
    assert r.table.set_index("region")["suppressed"]["a"] == False  # noqa: E712


def test_released_table_is_sorted_by_group_columns_and_counts_are_ints() -> None:
    sizes = {"d": 300, "b": 300, "c": 300, "a": 300}
    r = gate(cells(sizes))
    assert p_wrong(r, sizes) < 1e-6
    assert r.table["region"].tolist() == list(REGIONS)
    assert str(r.table["count"].dtype) == "Int64"
    assert [d.group for d in r.decisions] == [{"region": k} for k in REGIONS]


def test_several_group_columns_and_no_group_column() -> None:
    df = cells({"a": 300, "b": 300})
    df["day"] = np.where(df.index % 2 == 0, 1, 2)
    two = spec({"region": ("a", "b"), "day": (1, 2, 3)})
    r = gate(df, two)
    assert list(r.table.columns)[:3] == ["region", "day", "count"]
    assert r.table[["region", "day"]].values.tolist() == [
        ["a", 1], ["a", 2], ["a", 3], ["b", 1], ["b", 2], ["b", 3],
    ]
    total = gate(df[["msisdn"]], spec({}))
    assert list(total.table.columns)[:1] == ["count"] and len(total.table) == 1
    assert total.decisions[0].group == {}


def test_empty_contributions_release_every_cell_with_noise() -> None:
    df = pd.DataFrame({"msisdn": pd.Series([], dtype=np.int64), "region": pd.Series([], dtype=str)})
    for contributions in (df, None):
        r = gate(contributions)
        assert r.table["region"].tolist() == list(REGIONS)
        assert len(r.decisions) == len(REGIONS)


# --- output limits ------------------------------------------------------------


def test_a_domain_product_over_max_cells_is_refused_without_data() -> None:
    policy = ReleasePolicy(max_cells=5)
    with pytest.raises(ReleaseRefused) as exc:
        gate(None, policy=policy)
    assert exc.value.exit_code == 3
    assert str(exc.value) == (
        "the group domains have 6 cells in all, more than the policy limit max_cells = 5; "
        "group by fewer or coarser columns, or ask the operator to raise max_cells"
    )


# --- epsilon guards -----------------------------------------------------------


@pytest.mark.parametrize("eps", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_epsilon_must_be_positive_and_finite(eps: float) -> None:
    with pytest.raises(BadInputError) as exc:
        gate(cells({"a": 20}), epsilon=eps)
    assert exc.value.exit_code == 2
    assert str(exc.value) == f"epsilon must be a positive finite number, found {eps!r}"


def test_epsilon_must_be_a_number() -> None:
    for bad in (True, None, [1]):
        with pytest.raises(BadInputError, match="epsilon must be a positive number"):
            gate(cells({"a": 20}), epsilon=bad)


def test_epsilon_under_the_policy_minimum_or_not_a_whole_micro_epsilon_is_refused() -> None:
    # unlimited-probe attack (issue #14): ε = 1e-17 was accepted and spent nothing
    with pytest.raises(BadInputError) as exc:
        gate(cells({"a": 20}), epsilon=1e-17)
    assert exc.value.exit_code == 2
    assert "is not a whole number of micro-ε" in str(exc.value)
    with pytest.raises(BadInputError) as exc:
        gate(cells({"a": 20}), epsilon=0.005)
    assert str(exc.value) == (
        "epsilon 0.005 is under the policy minimum min_epsilon_per_run = 0.01; ask for at least 0.01"
    )


def test_epsilon_over_the_per_run_cap_is_refused() -> None:
    with pytest.raises(ReleaseRefused) as exc:
        gate(cells({"a": 20}), epsilon=1.5)
    assert str(exc.value) == (
        "epsilon 1.5 is over the per-run cap max_epsilon_per_run = 1; ask for at most 1"
    )


# --- contribution schema: strict refuses, the worker's gate is total ------------

SUM = spec({"region": REGIONS}, aggregation="sum", value_bounds=(0.0, 10.0))


def refused(df: object, privacy: PrivacySpec = COUNT, known: object = None) -> str:
    with pytest.raises(ReleaseRefused) as exc:
        gate(df, privacy, known_units=known, strict=True)
    assert exc.value.exit_code == 3
    total = gate(df, privacy, known_units=known)  # what a worker does: release anyway
    assert total.table["region"].tolist() == list(REGIONS)
    assert total.diagnostics.get("contributions_refused") or total.diagnostics["rows_dropped"]
    return str(exc.value)


def test_contributions_must_be_a_dataframe() -> None:
    assert refused([[1, "a"]]) == (
        "contributions must be a pandas DataFrame [unit, group columns…, value], found list; "
        "return a DataFrame from the entrypoint"
    )


def test_missing_unit_column_is_refused() -> None:
    assert refused(pd.DataFrame({"region": ["a"]})) == (
        "contributions have no privacy-unit column 'msisdn' (declared as [privacy] unit); "
        "return the unit column the algorithm was given"
    )


def test_missing_value_column_in_a_sum_is_refused() -> None:
    df = pd.DataFrame({"msisdn": [1], "region": ["a"]})
    assert refused(df, SUM) == (
        "contributions have no value column 'value', required for aggregation 'sum'; "
        "return it, or set [privacy] value_column"
    )


def test_undeclared_columns_are_refused_without_echoing_their_names() -> None:
    # a column can be named after private rows (issue #14): its name never appears
    df = pd.DataFrame({"msisdn": [1], "region": ["a"], "value": [3.0], "4915100000001": [7]})
    msg = refused(df)
    assert msg == (
        "contributions have 2 undeclared column(s); allowed: 'msisdn', 'region'; "
        "drop the others or declare them in [privacy.groups]"
    )
    assert refused(pd.DataFrame({"msisdn": [1]})) == (
        "contributions lack declared group column(s) 'region'; return them or fix [privacy.groups]"
    )


def test_duplicate_and_non_string_column_names_are_refused() -> None:
    df = pd.DataFrame([[1, "a", "b"]], columns=["msisdn", "region", "region"])
    assert refused(df) == (
        "contributions have duplicate column names; give every column a distinct name"
    )
    df = pd.DataFrame([[1, "a"]], columns=["msisdn", 0])
    assert refused(df) == (
        "contributions column names must be strings; rename the columns in the algorithm"
    )


def test_non_numeric_and_non_finite_values() -> None:
    df = pd.DataFrame({"msisdn": [1, 2], "region": ["a", "a"], "value": ["x", "y"]})
    assert refused(df, SUM).startswith("value column 'value' must be numeric, found dtype ")
    for bad in (np.nan, np.inf, -np.inf):
        df = pd.DataFrame({"msisdn": [1, 2], "region": ["a", "a"], "value": [1.0, bad]})
        assert refused(df, SUM) == (
            "value column 'value' holds non-finite values (NaN or infinity); "
            "drop or fill them in the algorithm"
        )
        # the worker's gate drops the row and releases the rest
        assert gate(df, SUM).diagnostics["rows_dropped"] == {"value not finite": 1}


def test_missing_units_are_refused_and_missing_or_unknown_labels_dropped() -> None:
    df = pd.DataFrame({"msisdn": [1.0, np.nan], "region": ["a", "a"]})
    assert refused(df) == (
        "privacy-unit column 'msisdn' holds missing values; every contribution needs a unit"
    )
    df = pd.DataFrame({"msisdn": [1, 2, 3, 4], "region": ["a", None, "zz", "b"]})
    for strict in (True, False):
        r = gate(df, strict=strict)
        assert r.diagnostics["rows_dropped"] == {"group label missing or outside the public domain": 2}
        assert "zz" not in json.dumps(r.analyst_view())
    df = pd.DataFrame({"msisdn": [1, 2], "region": [[1], [2]]})
    assert gate(df, strict=True).diagnostics["rows_dropped"] == {
        "group label missing or outside the public domain": 2
    }


def test_invented_units_are_refused_without_naming_them() -> None:
    df = cells({"a": 30})
    known = units_of(df)
    forged = pd.concat([df, pd.DataFrame({"msisdn": [987654321], "region": ["a"]})])
    msg = refused(forged, known=known)
    assert msg == (
        "privacy-unit column 'msisdn' holds values that are not units of this run; "
        "return the 'msisdn' values the algorithm was given, unchanged"
    )
    assert "987654321" not in msg
    assert gate(forged, known_units=known).diagnostics["rows_dropped"] == {
        "privacy unit not one of this run's pseudonyms": 1
    }
    # The same ids as strings are not the run's units either.
    assert refused(df.assign(msisdn=df.msisdn.astype(str)), known=known) == msg
    as_str = df.assign(msisdn=df.msisdn.astype(str))
    r = gate(as_str, known_units=units_of(as_str), strict=True)
    assert r.mechanism["units_verified"] is True


# --- the record ---------------------------------------------------------------


def test_release_round_trips_through_json() -> None:
    df = cells({"a": 300, "b": 2})
    df["value"] = 4.0
    mean = spec({"region": REGIONS}, aggregation="mean", value_bounds=(0.0, 10.0))
    r = gate(df, mean)
    data = json.loads(json.dumps(r.to_dict()))
    back = Release.from_dict(data)
    assert back.decisions == r.decisions
    assert back.table.columns.tolist() == [
        "region", "mean", "total", "suppressed", "noise_scale", "ci_low", "ci_high",
    ]
    assert json.loads(json.dumps(back.to_dict())) == data


def test_analyst_view_leaves_out_the_diagnostics() -> None:
    df = pd.DataFrame({"msisdn": [1, 2, 3], "region": ["a", "secret-label", "a"]})
    r = gate(df)
    view = r.analyst_view()
    assert "diagnostics" not in view and "secret-label" not in json.dumps(view)
    assert r.to_dict()["diagnostics"]["rows_dropped"] == {
        "group label missing or outside the public domain": 1
    }
    assert view["cells_suppressed"] + view["cells_released"] == len(REGIONS)


def test_mechanism_states_the_epsilon_split_and_scales() -> None:
    df = cells({"a": 2000})
    df["value"] = 1.0
    s = spec({"region": REGIONS}, aggregation="sum", value_bounds=(-2.0, 8.0), max_groups_per_unit=3)
    r = gate(df, s)
    m = r.mechanism
    assert m["epsilon_split"] == {"count": 0.5, "sum": 0.5}
    assert m["count"]["scale"] == pytest.approx(3 / 0.5)
    assert m["sum"]["mechanism"] == "laplace"
    assert m["sum"]["sensitivity"] == {"l1": 3 * 8.0}
    assert m["sum"]["scale"] == pytest.approx(3 * 8.0 / 0.5)
    assert m["sum"]["interval_95_half_width"] == pytest.approx(3 * 8.0 / 0.5 * math.log(20))
    assert m["sensitivity"]["sum_l1"] == 24.0 and m["max_groups_per_unit"] == 3
    assert r.epsilon == 1.0 and r.delta == 0.0
    assert "dominance" not in json.dumps(m)

    gauss = ReleasePolicy(sum_mechanism="gaussian")
    g = gate(df, s, policy=gauss).mechanism
    assert g["sum"]["mechanism"] == "gaussian"
    assert g["sum"]["sensitivity"] == {"l2": pytest.approx(math.sqrt(3) * 8.0)}
    assert g["sum"]["delta"] == pytest.approx(POLICY.delta)
    assert g["count"]["delta"] == 0.0 and g["delta"] <= POLICY.delta

    mean = spec({"region": REGIONS}, aggregation="mean", value_bounds=(-2.0, 8.0))
    mm = gate(df, mean).mechanism
    # The mean noises sum(value - mid): half-width 5, not max |bound| 8.
    assert mm["mean"]["sensitivity"] == {"l1": 5.0}


def test_sums_and_means_are_post_processed_within_the_bounds() -> None:
    sizes = {r: 2000 for r in REGIONS}
    df = cells(sizes)
    df["value"] = np.where(df.index % 2 == 0, 0.01, 99.99)
    s = spec({"region": REGIONS}, aggregation="sum", value_bounds=(0.0, 100.0))
    r = gate(df, s)
    assert p_wrong(r, sizes) < 1e-6
    sums = r.table["sum"].astype(float)
    assert (sums >= 0).all() and (sums == sums.round(2)).all()
    assert (r.table["ci_low"] <= r.table["sum"]).all() and (r.table["sum"] <= r.table["ci_high"]).all()
    # No dominance rule: all-zero cells are released like any other.
    zeros = df.assign(value=0.0)
    assert gate(zeros, s).cells_released == len(REGIONS)
    m = spec({"region": REGIONS}, aggregation="mean", value_bounds=(0.0, 100.0))
    mean = gate(df.assign(value=100.0), m).table["mean"].astype(float)
    assert mean.between(0.0, 100.0).all()


def test_policy_round_trips_and_retired_dominance_keys_are_refused() -> None:
    p = ReleasePolicy(value_decimals=0, delta=1e-6)
    assert ReleasePolicy.from_dict(p.to_dict()) == p
    s = PrivacySpec.from_dict(
        {"unit": "msisdn", "groups": {"region": "dataset", "day": {"range": [0, 3]}}}
    )
    assert s.groups["day"].values == (0, 1, 2, 3) and s.groups["region"].dataset == "region"
    assert PrivacySpec.from_dict(s.to_dict()) == s
    with pytest.raises(BadInputError, match="dominance_n are no longer applied"):
        ReleasePolicy.from_dict({"dominance_n": 2})


def test_groups_must_be_declared_with_a_domain() -> None:
    with pytest.raises(BadInputError, match=r"\[privacy.groups\] is required"):
        PrivacySpec.from_dict({"unit": "msisdn"})
    with pytest.raises(BadInputError, match="privacy.groups.day: range must be"):
        PrivacySpec.from_dict({"unit": "msisdn", "groups": {"day": {"range": [3, 1]}}})
    with pytest.raises(BadInputError, match="privacy.groups must be a table|must be a table"):
        PrivacySpec.from_dict({"unit": "msisdn", "groups": ["region"]})


def test_mean_release_also_carries_the_total_as_post_processing() -> None:
    """A mean cell releases mean and total from the same two noisy measurements:
    no extra epsilon is spent."""
    rows = pd.DataFrame({"msisdn": np.arange(4000), "region": "north", "value": 100.0})
    m = spec({"region": REGIONS}, aggregation="mean", value_bounds=(0.0, 200.0))
    out = gate(rows, m)
    assert out.epsilon == 1.0 and out.mechanism["epsilon_split"] == {"count": 0.5, "mean": 0.5}
    cell = out.table.set_index("region").loc["north"]
    # true total 400 000; count noise (scale 2) times mid 100 plus sum noise (scale 200):
    # 25 scales each bound a false failure below 1e-10
    assert abs(cell["total"] - 400_000) <= 25 * 2 * 100 + 25 * 200
    assert abs(cell["mean"] - 100.0) <= 5.0
    # A 95 % interval misses the truth one run in twenty; three half-widths
    # around the released mean hold it except with probability far below 1e-4.
    half = (cell["ci_high"] - cell["ci_low"]) / 2
    assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"] and 0 < half < 1.0
    assert abs(cell["mean"] - 100.0) <= 3 * half


def test_table_to_dict_writes_every_dtype_as_the_cell_by_cell_conversion_did() -> None:
    """The column-at-a-time conversion of a released table gives exactly what
    converting each cell with ``_jsonable`` gives, type for type: missing and
    non-finite values as None, numpy scalars as Python ones, times as text."""
    from opal.release.gate import _jsonable, table_to_dict

    table = pd.DataFrame({
        "i": np.array([3, -2, 0], dtype="int64"),
        "u": np.array([1, 2, 2**63], dtype="uint64"),
        "b": [True, False, True],
        "f": [1.5, np.nan, -np.inf],
        "f32": np.array([0.1, 2.0, np.inf], dtype="float32"),
        "I": pd.array([4, None, 6], dtype="Int64"),
        "F": pd.array([0.25, None, 7.0], dtype="Float64"),
        "B": pd.array([True, None, False], dtype="boolean"),
        "s": pd.Series(["a", None, "ç"], dtype="str"),
        "S": pd.array(["x", None, "y"], dtype="string"),
        "t": pd.to_datetime(["2024-01-01 00:00", None, "2024-03-01 12:00"], utc=True),
        "d": pd.to_timedelta([1, 2, None], unit="h"),
        "c": pd.Categorical(["p", "q", None]),
        "o": pd.Series([None, 2, "z"], dtype=object),
    })
    table.insert(0, "dup", 1)
    table.insert(1, "dup", 2, allow_duplicates=True)
    expected = [[_jsonable(v) for v in row] for row in table.itertuples(index=False, name=None)]
    got = table_to_dict(table)
    assert got["columns"] == [str(c) for c in table.columns]
    assert got["rows"] == expected
    assert [[type(v) for v in row] for row in got["rows"]] == [[type(v) for v in row] for row in expected]
    assert got["rows"][1][table.columns.get_loc("I")] is None and got["rows"][2][5] is None
    assert table_to_dict(table.iloc[:0]) == {"columns": got["columns"], "rows": []}
    assert table_to_dict(pd.DataFrame(index=range(2))) == {"columns": [], "rows": [[], []]}
