"""Budget and repeat-run attacks through real workers (issue 5, attacks 4 and 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ALGORITHMS, Opal


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from opal.data.synth import synthesize

    out = tmp_path_factory.mktemp("small") / "cdr.parquet"
    synthesize(out, subscribers=1500, days=3, seed=5)
    return out


def _approved(opal: Opal, world: Path, *, policy: Path | None = None) -> None:
    for name, role in (("olga", "operator"), ("sam", "statistician"), ("rita", "reviewer"), ("ravi", "reviewer")):
        opal("keys", "new", name, "--role", role, check=True)
    opal.board()
    extra = ["--policy", str(policy)] if policy else []
    opal("dataset", "register", "demo", str(world), "--key", "olga", *extra, check=True)
    opal("algo", "submit", str(ALGORITHMS / "population_density"), "--key", "sam", check=True)
    opal("algo", "approve", "population_density", "--key", "rita", check=True)
    opal("algo", "approve", "population_density", "--key", "ravi", check=True)


def test_identical_runs_get_one_cached_answer_and_spend_once(opal: Opal, small_world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Averaging attack: 1 000 identical runs return one answer and spend ε once."""
    _approved(opal, small_world)
    opal.start_worker("demo", key="olga")
    monkeypatch.setenv("OPAL_HOME", str(opal.home))
    monkeypatch.setenv("OPAL_BROKER_URL", opal.broker_url)
    from opal.node import Node
    from opal.runs import request_run
    from opal.runs.dispatch import dispatch, wait

    node = Node.open(opal.home)
    sam = node.keyring.signer("sam")
    params = {"start_day": 0, "end_day": 2}
    first = request_run(node, algorithm="population_density", dataset="demo", params=params, epsilon=0.5, signer=sam)
    dispatch(node, first)
    assert wait(node, first.run_id, timeout=120).state == "released"
    ids = []
    for _ in range(999):
        r = request_run(node, algorithm="population_density", dataset="demo", params=params, epsilon=0.5, signer=sam)
        dispatch(node, r)
        ids.append(r.run_id)
    digests = {wait(node, i, timeout=300).result_digest for i in ids}
    first_digest = wait(node, first.run_id).result_digest
    assert digests == {first_digest}, "a repeated run drew fresh noise"
    budget = opal.json("budget", "show")[0]
    assert budget["spent"] == pytest.approx(0.5)

    # Reworded-but-equivalent params (a window past the data's end) are charged each time,
    # so the budget stops the attack.
    spent_runs = 1
    refused = None
    for end_day in range(3, 40):
        proc = opal("run", "population_density", "--dataset", "demo", "--params",
                    json.dumps({"start_day": 0, "end_day": end_day}), "--epsilon", "0.5", "--key", "sam")
        if proc.returncode == 3:
            refused = proc
            break
        assert proc.returncode == 0, proc.stderr
        spent_runs += 1
    assert refused is not None, "the budget never stopped the reworded runs"
    assert spent_runs == 20                           # 10 / 0.5
    assert "privacy budget of dataset 'demo' exhausted" in refused.stderr
    assert opal.json("budget", "show")[0]["spent"] == pytest.approx(10.0)

    # issue #14: after exhaustion, vanishing ε was admitted and spent nothing (unlimited probes)
    entries = len(opal.json("ledger", "show"))
    for tiny, why in (("1e-17", "not a whole number of micro-ε"), ("0.005", "under the policy minimum")):
        proc = opal("run", "population_density", "--dataset", "demo", "--params",
                    json.dumps({"start_day": 0, "end_day": 1}), "--epsilon", tiny, "--key", "sam")
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
    assert len(opal.json("ledger", "show")) == entries
    # ... and the same file registered under another name brought a fresh budget of 10
    opal("dataset", "register", "again", str(small_world), "--key", "olga", check=True)
    again = opal.json("budget", "show", "--dataset", "again")[0]
    assert again["left"] == 0 and again["shared_with"] == ["demo"]
    assert opal("ledger", "verify").returncode == 0


def test_budget_cannot_be_overspent_in_parallel_or_after_restart(opal: Opal, small_world: Path, tmp_path: Path) -> None:
    """Total 1, per-run 0.25: of 5 parallel runs on two workers exactly 4 are released."""
    policy = tmp_path / "policy.toml"
    policy.write_text("total_epsilon = 1.0\nmax_epsilon_per_run = 0.25\ndefault_epsilon = 0.25\n")
    _approved(opal, small_world, policy=policy)
    opal.start_worker("demo", key="olga")
    opal.start_worker("demo", key="olga")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "opal", "run", "population_density", "--dataset", "demo", "--key", "sam",
             "--params", json.dumps({"start_day": 0, "end_day": d}), "--epsilon", "0.25"],
            env=opal.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for d in range(5)
    ]
    codes = sorted(p.wait(timeout=300) for p in procs)
    assert codes == [0, 0, 0, 0, 3]
    budget = opal.json("budget", "show")[0]
    assert budget["spent"] == pytest.approx(1.0) and budget["reserved"] == 0

    # after a restart of the workers the budget is still spent
    opal.stop_workers()
    opal.start_worker("demo", key="olga")
    proc = opal("run", "population_density", "--dataset", "demo", "--key", "sam",
                "--params", json.dumps({"start_day": 1, "end_day": 1}), "--epsilon", "0.25")
    assert proc.returncode == 3, proc.stderr
    refusals = [e for e in opal.json("ledger", "show", "--type", "run_finished") if e["body"]["outcome"] == "refused"]
    assert len(refusals) == 2 and all(e["body"]["exit_code"] == 3 for e in refusals)
    assert opal("ledger", "verify").returncode == 0
