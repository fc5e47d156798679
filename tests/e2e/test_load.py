"""1 000 runs at once against two worker processes on one dataset (issue #8, test 3).

Distinct params so nothing is served from the cache, ε = 0.001 each against a
total of 10: none lost, none released twice, the ε charged is the sum over the
released runs, and the ledger verifies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.scenario import Scenario, build
from opal.runs import request_run
from opal.runs.dispatch import dispatch_many, wait
from tests.worker.workerkit import Workers, budget_of, outcomes_in_ledger, spent_events

RUNS = 1000
EPSILON = 0.001


@pytest.fixture
def sc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_url: str) -> Scenario:
    monkeypatch.setenv("OPAL_BROKER_URL", broker_url)
    from opal.release.policy import ReleasePolicy

    # 1 000 runs of 0.001 need a policy minimum that low (the default is 0.01)
    policy = ReleasePolicy(min_epsilon_per_run=0.001)
    return build(tmp_path / "home", subscribers=200, days=1, policy=policy)


@pytest.fixture
def workers(sc: Scenario, broker_url: str) -> Iterator[Workers]:
    w = Workers(home=sc.node.home.root, broker_url=broker_url)
    yield w
    w.stop_all()


def test_thousand_runs_on_two_workers_none_lost_none_twice(sc: Scenario, workers: Workers, broker_url: str) -> None:
    workers.start()
    workers.start()
    sam = sc.node.keyring.signer("sam")
    t0 = time.monotonic()
    ids: list[str] = []
    batch: list[str] = []
    for i in range(RUNS):
        r = request_run(sc.node, algorithm="spin_count", dataset=sc.dataset, params={"tag": i},
                        epsilon=EPSILON, signer=sam)
        batch.append(r.run_id)
        if len(batch) == 50:
            dispatch_many(sc.node, batch)
            ids += batch
            batch = []
    submitted = time.monotonic() - t0
    states = [wait(sc.node, r, timeout=600).state for r in ids]
    elapsed = time.monotonic() - t0
    print(f"\n{RUNS} runs: submitted in {submitted:.1f} s, all finished in {elapsed:.1f} s "
          f"({RUNS / elapsed:.1f} runs/s)")

    assert len(ids) == RUNS == len(set(ids))
    assert states == ["released"] * RUNS
    outcomes = outcomes_in_ledger(sc.node)
    assert [outcomes[r] for r in ids] == [1] * RUNS, "a run was released twice or never"
    finished = sc.node.ledger.entries(type="run_finished")
    assert not [e for e in finished if "cached_from" in e.body], "a run was served from the cache"
    spent = spent_events(sc.node)
    assert set(spent) == set(ids)
    budget = budget_of(sc.node, sc.dataset)
    assert budget["spent_micro"] == 1_000 * RUNS  # exact: no float accumulation
    assert budget["spent"] == pytest.approx(EPSILON * RUNS) == pytest.approx(sum(spent.values()))
    assert budget["reserved"] == pytest.approx(0.0)
    # both workers served
    served = {e.actor for e in sc.node.ledger.entries(type="run_started")}
    assert len(served) == 1  # one operator key …
    owners = {row["worker"].rsplit(":", 1)[0] for row in sc.node.db.query("SELECT worker FROM run_attempts")}
    assert len(owners) >= 2    # … in two worker processes
    proc = subprocess.run([sys.executable, "-m", "opal", "ledger", "verify"], env=workers.env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
