"""Attacks on the release gate; each must fail for the attacker.

Numbered as in issue #5. Data (who is in which cell, secret bits) comes from
seeded generators so it is reproducible; the noise never does: it is drawn by
OpenDP from the operating system. Every statistical assertion states its
false-failure probability, kept below 1e-6.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest

from opal.release import (
    PrivacySpec,
    ReleasePolicy,
    bounded_aggregate,
    dominance_failures,
    release,
    sensitivity,
)
from opal.release.noise import discrete_laplace_tail

COUNT = PrivacySpec(unit="msisdn", aggregation="count", max_groups_per_unit=1)
POLICY = ReleasePolicy()
HOEFFDING_1E6 = math.sqrt(math.log(1e6) / 2)  # slack * sqrt(n) for P < 1e-6


def by_region(sizes: dict[str, int]) -> pd.DataFrame:
    """One row per unit; region ``k`` holds ``sizes[k]`` distinct units."""
    regions = np.repeat(list(sizes), list(sizes.values()))
    return pd.DataFrame({"msisdn": np.arange(1, len(regions) + 1), "region": regions})


def dl_var(scale: float) -> float:
    a = math.exp(-1.0 / scale)
    return 2 * a / (1 - a) ** 2


# 1. Users, not rows ----------------------------------------------------------


def test_1_a_cell_counts_units_not_rows() -> None:
    heavy = pd.DataFrame({"msisdn": np.full(500, 7, dtype=np.int64), "region": "R"})
    light = pd.DataFrame({"msisdn": np.arange(100, 109, dtype=np.int64), "region": "R"})
    df = pd.concat([heavy, light], ignore_index=True)
    assert len(df) == 509

    agg = bounded_aggregate(df, COUNT)
    assert agg.units.tolist() == [10]

    r = release(df, privacy=COUNT, policy=POLICY, epsilon=0.5, known_units=df.msisdn.unique())
    scale, tau = r.mechanism["count"]["scale"], r.mechanism["threshold"]
    assert tau >= 15
    # False failure: the noisy count of 10 reaches tau.
    assert discrete_laplace_tail(scale, tau - 10) < 1e-6
    assert r.cells_released == 0 and r.table.empty
    assert r.decisions[0].released is False and r.decisions[0].group is None


# 2. Pair differencing --------------------------------------------------------


def test_2_pair_differencing_guesses_no_better_than_epsilon_allows() -> None:
    data = np.random.default_rng(2)
    n_units, n_targets, eps = 1000, 200, 0.5
    ids = np.arange(10_000, 10_000 + n_units, dtype=np.int64)
    in_r = data.random(n_units) < 0.5
    rows = pd.DataFrame(
        {"msisdn": np.repeat(ids, 3), "region": np.repeat(np.where(in_r, "R", "S"), 3)}
    )
    known = pd.Series(ids)
    targets = data.choice(n_units, size=n_targets, replace=False)

    def guess(count_all: float, count_without: float) -> bool:
        return count_all - count_without >= 1

    def count_r(frame: pd.DataFrame, *, noise: bool) -> float:
        if not noise:  # the attack without the gate: exact distinct counts
            agg = bounded_aggregate(frame, COUNT)
            hit = agg.keys["region"] == "R"
            return float(agg.units[hit.to_numpy()].sum())
        r = release(frame, privacy=COUNT, policy=POLICY, epsilon=eps, known_units=known)
        return float(r.table.loc[r.table.region == "R", "count"].sum())

    correct = {True: 0, False: 0}
    for t in targets:
        without = rows[rows.msisdn != ids[t]]
        for noise in (True, False):
            g = guess(count_r(rows, noise=noise), count_r(without, noise=noise))
            correct[noise] += g == bool(in_r[t])

    assert correct[False] == n_targets  # no gate: always right
    total_eps = 2 * eps  # two runs
    bound = math.exp(total_eps) / (1 + math.exp(total_eps))
    # Sampling slack (Hoeffding, 200 guesses): P(accuracy > bound + slack) < 1e-6.
    # Region R (~500 units) is far over the threshold, so delta plays no part.
    slack = HOEFFDING_1E6 / math.sqrt(n_targets)
    assert correct[True] / n_targets <= bound + slack
    assert bound + slack < 0.92


# 3. Margin differencing ------------------------------------------------------


def test_3_a_suppressed_cell_cannot_be_recovered_from_the_margins() -> None:
    sizes = {"A": 2, "B": 200, "C": 300}
    df = by_region(sizes)
    eps, trials = 0.5, 300
    errors = []
    for _ in range(trials):
        regional = release(df, privacy=COUNT, policy=POLICY, epsilon=eps)
        total = release(df[["msisdn"]], privacy=COUNT, policy=POLICY, epsilon=eps)
        t = regional.table.set_index("region")["count"]
        assert "A" not in t.index
        assert all(d.group != {"region": "A"} for d in regional.decisions)
        recovered = total.table["count"].iloc[0] - t["B"] - t["C"]
        errors.append(recovered - sizes["A"])
    scale = regional.mechanism["count"]["scale"]
    tau = regional.mechanism["threshold"]
    # P(A's cell is released in any trial) and P(B, C or the total suppressed).
    assert (
        trials
        * (discrete_laplace_tail(scale, tau - 2) + 3 * discrete_laplace_tail(scale, 200 - tau + 1))
        < 1e-6
    )
    # The recovered value carries the noise of three releases: its spread is
    # that of three independent discrete Laplace draws. Sample std over 300
    # trials has relative sd ~0.1; [0.6, 1.5] is > 4 sd from 1 on either side
    # in variance terms (P < 1e-6 for these light-tailed sums).
    expected_sd = math.sqrt(3 * dl_var(scale))
    sd = float(np.std(errors))
    assert 0.6 * expected_sd <= sd <= 1.5 * expected_sd
    assert np.mean(np.abs(errors)) > 1.0  # not recovered exactly


# 6. Dinur–Nissim reconstruction ----------------------------------------------


def _dinur_nissim(data: np.random.Generator, *, eps: float, budget: float, noise: bool) -> float:
    n, filler = 100, 1000
    secret = data.integers(0, 2, n)
    target_ids = np.arange(1, n + 1, dtype=np.int64)
    filler_ids = np.arange(10_000, 10_000 + filler, dtype=np.int64)
    known = pd.Series(np.concatenate([target_ids, filler_ids]))
    # Filler units (known to the attacker) keep every answer far above the
    # threshold, so the defence on trial is the noise, not suppression.
    spent, a_rows, answers = 0.0, [], []
    while spent + eps <= budget + 1e-9:
        subset = data.random(n) < 0.5
        members = target_ids[subset & (secret == 1)]
        df = pd.DataFrame({"msisdn": np.concatenate([members, filler_ids])})
        if noise:
            r = release(df, privacy=COUNT, policy=POLICY, epsilon=eps, known_units=known)
            spent += r.epsilon
            answers.append(float(r.table["count"].iloc[0]) - filler)
        else:
            spent += eps
            answers.append(float(bounded_aggregate(df, COUNT).units[0]) - filler)
        a_rows.append(subset.astype(float))
    estimate = np.linalg.lstsq(np.array(a_rows), np.array(answers), rcond=None)[0]
    return float(np.mean((estimate > 0.5) == secret))


def test_6_dinur_nissim_reconstruction_fails_through_the_gate() -> None:
    # Total budget 10 at 0.1 a query: 100 random-subset queries on 100 secret bits.
    data = np.random.default_rng(6)
    without_gate = [_dinur_nissim(data, eps=0.1, budget=10.0, noise=False) for _ in range(3)]
    assert min(without_gate) > 0.95  # exact answers: the linear system gives every bit

    reps = 10
    through_gate = [_dinur_nissim(data, eps=0.1, budget=10.0, noise=True) for _ in range(reps)]
    # One reconstruction scores ~0.51 with sd ~0.05 (100 bits); the mean of 10
    # has sd ~0.016, so 0.60 is > 5 sd away (P < 1e-6, normal approximation).
    assert float(np.mean(through_gate)) <= 0.60


# 7. Contribution bounding ----------------------------------------------------


@pytest.mark.parametrize("aggregation", ["count", "sum"])
def test_7_one_heavy_unit_moves_the_aggregate_by_at_most_the_sensitivity(
    aggregation: str,
) -> None:
    data = np.random.default_rng(7)
    spec = PrivacySpec(
        unit="msisdn",
        aggregation=aggregation,
        max_groups_per_unit=3,
        value_bounds=(-5.0, 20.0) if aggregation == "sum" else None,
    )
    # 300 ordinary units in <= 3 cells each, so only the attacker's cells are chosen at random.
    base = pd.DataFrame(
        {
            "msisdn": np.repeat(np.arange(300, dtype=np.int64), 3),
            "cell": data.integers(0, 40, 900),
        }
    )
    heavy = pd.DataFrame(
        {"msisdn": np.full(10_000, 999, dtype=np.int64), "cell": data.integers(0, 60, 10_000)}
    )
    if aggregation == "sum":
        base["value"] = data.uniform(-5, 20, len(base))
        heavy["value"] = 1e12
    before = bounded_aggregate(base, spec)
    after = bounded_aggregate(pd.concat([base, heavy], ignore_index=True), spec)

    def frame(agg: object) -> pd.DataFrame:
        out = agg.keys.assign(units=agg.units)  # type: ignore[attr-defined]
        if agg.sums is not None:  # type: ignore[attr-defined]
            out["sums"] = agg.sums  # type: ignore[attr-defined]
        return out.set_index("cell")

    both = frame(before).join(frame(after), how="outer", suffixes=("_0", "_1")).fillna(0)
    sens = sensitivity(spec)
    d_units = (both.units_1 - both.units_0).abs()
    assert (d_units > 0).sum() <= sens.cells
    assert d_units.max() <= sens.count_linf and d_units.sum() <= sens.count_l1
    assert d_units.sum() == sens.count_l1  # the attacker does get its 3 cells
    if aggregation == "sum":
        d_sums = (both.sums_1 - both.sums_0).abs()
        assert d_sums.sum() <= sens.sum_l1 + 1e-6
        assert sens.sum_l1 == 3 * 20.0


def test_7_duplicate_rows_and_many_values_in_one_cell_count_once() -> None:
    spec = PrivacySpec(unit="msisdn", aggregation="sum", value_bounds=(0.0, 10.0))
    df = pd.DataFrame({"msisdn": [1] * 500 + [2], "cell": ["x"] * 501, "value": [9.0] * 501})
    agg = bounded_aggregate(df, spec)
    assert agg.units.tolist() == [2]
    assert agg.sums.tolist() == [19.0]  # unit 1's 500 rows add to 4 500, clamped to 10


# 8. Keys from data -----------------------------------------------------------


def test_8_grouping_by_a_per_subscriber_column_releases_nothing() -> None:
    n = 500
    ids = np.arange(5_000, 5_000 + n, dtype=np.int64)
    df = pd.DataFrame({"msisdn": ids, "imsi": [f"imsi-{i}" for i in ids]})
    r = release(df, privacy=COUNT, policy=POLICY, epsilon=1.0, known_units=ids)
    scale, tau = r.mechanism["count"]["scale"], r.mechanism["threshold"]
    # False failure: any of the 500 one-unit cells reaches tau.
    assert n * discrete_laplace_tail(scale, tau - 1) < 1e-6
    assert r.table.empty and r.cells_released == 0
    assert all(d.group is None for d in r.decisions)
    assert "imsi-" not in str(r.to_dict())
    # With the bare 15-unit floor the same attack leaks a key with P ~ 3e-4.
    assert n * discrete_laplace_tail(scale, 15 - 1) > 1e-4


# 9. Dominance ----------------------------------------------------------------


def test_9_dominance_rules_match_acro() -> None:
    # 1000 + 10 of 1055 = 95.7% > 90%.
    assert "n-k" in dominance_failures([1000] + [5] * 11)
    # 159 - 100 - 50 = 9 < 10% of 100.
    assert "p%" in dominance_failures([100, 50] + [1] * 9)
    # With n=2, k=0.9 a p% failure implies an n-k failure; this one is n-k only:
    # 200 of 210 > 90%, but 210 - 200 = 10 is not < 10.
    assert dominance_failures([100, 100] + [1] * 10) == ("n-k",)
    assert dominance_failures([5] * 12) == ()
    assert dominance_failures([100, 50, 40]) == ()  # 150 of 190 = 79%
    assert dominance_failures([7]) == ("n-k", "p%")  # a single contributor
    assert dominance_failures([0, 0, 0]) == ("p%",)  # zeros are disclosive (ACRO)


def test_9_dominated_cells_are_suppressed_by_the_gate() -> None:
    cells = {
        "nk": [1000] + [5] * 11,
        "pp": [100, 50] + [1] * 9,
        "nk_only": [100, 100] + [1] * 10,
        "ok": [5] * 12,
    }
    frames, uid = [], 1
    for name, vals in cells.items():
        frames.append(
            pd.DataFrame({"msisdn": np.arange(uid, uid + len(vals)), "cell": name, "value": vals})
        )
        uid += len(vals)
    df = pd.concat(frames, ignore_index=True)
    spec = PrivacySpec(unit="msisdn", aggregation="sum", value_bounds=(0.0, 1000.0))
    # A policy that lets 11-unit cells through the count threshold, so that
    # dominance is what decides.
    policy = ReleasePolicy(min_units_per_cell=1, max_epsilon_per_run=100.0)
    r = release(df, privacy=spec, policy=policy, epsilon=100.0)
    scale, tau = r.mechanism["count"]["scale"], r.mechanism["threshold"]
    assert 4 * discrete_laplace_tail(scale, 11 - tau + 1) < 1e-6
    assert r.table["cell"].tolist() == ["ok"]
    reasons = [d.reason for d in r.decisions if not d.released]
    assert len(reasons) == 3 and all(x.startswith("dominance: ") for x in reasons)
    assert sum("n-k rule" in x and "p% rule" not in x for x in reasons) == 1
    assert sum("p% rule" in x for x in reasons) == 2
    assert all(d.group is None for d in r.decisions if not d.released)


# 10. Randomness --------------------------------------------------------------


def test_10_noise_does_not_come_from_python_or_numpy_generators(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    random.seed(0)
    np.random.seed(0)
    fixed = np.random.default_rng(0)
    monkeypatch.setattr(np.random, "default_rng", lambda *a, **k: fixed)
    monkeypatch.setattr(random, "random", lambda: 0.5)
    monkeypatch.setattr(np.random, "laplace", lambda *a, **k: 0.0)
    monkeypatch.setattr(np.random, "normal", lambda *a, **k: 0.0)
    df = by_region({f"r{i:02d}": 100 for i in range(50)})
    a = release(df, privacy=COUNT, policy=POLICY, epsilon=1.0).table
    np.random.seed(0)
    random.seed(0)
    b = release(df, privacy=COUNT, policy=POLICY, epsilon=1.0).table
    assert len(a) == len(b) == 50  # 100-unit cells: P(suppressed) ~ e^-79 each
    # Two discrete Laplace(1) draws agree with P ~ 0.28: 50 cells all agreeing
    # has P ~ 1e-28.
    assert (a["count"] != b["count"]).any()
    assert (a["count"] != 100).any()


def test_10_noise_modules_never_touch_python_or_numpy_randomness() -> None:
    import inspect

    from opal.release import gate, noise

    for module in (gate, noise):
        src = inspect.getsource(module)
        assert "np.random" not in src and "import random" not in src
        assert "secrets" not in src
