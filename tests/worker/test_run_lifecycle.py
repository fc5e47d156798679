"""The run lifecycle in-process: signed messages, exactly-once outcomes,
takeover after a lost worker, the attempt cap, cancellation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.scenario import Scenario, build
from opal.errors import BadInputError, TrustError
from opal.runs import get_run, request_run
from opal.runs.cancel import cancel_run
from opal.runs.message import check_message, run_message
from opal.worker import state
from opal.worker.pipeline import MAX_ATTEMPTS, execute_run, run_owner
from tests.worker.workerkit import budget_of, outcomes_in_ledger, spent_events


@pytest.fixture
def sc(tmp_path: Path) -> Iterator[Scenario]:
    scenario = build(tmp_path / "home", subscribers=300, days=1)
    yield scenario
    state.close_runtimes()


def _request(sc: Scenario, tag: int, eps: float = 0.01, **params: Any) -> str:
    node = sc.node
    r = request_run(node, algorithm="spin_count", dataset=sc.dataset, params={"tag": tag, **params},
                    epsilon=eps, signer=node.keyring.signer("sam"))
    return r.run_id


def _execute(sc: Scenario, run_id: str, *, worker: str | None = None) -> dict[str, Any]:
    return execute_run(sc.node, run_id, signer=sc.node.keyring.signer("olga"), runtime_for=state.runtime_for,
                       worker=worker)


def test_well_formed_signed_message_names_its_run(sc: Scenario) -> None:
    run_id = _request(sc, 1)
    message = run_message(sc.node, run_id)
    assert json.loads(json.dumps(message)) == message          # JSON only
    assert check_message(sc.node, message) == run_id


@pytest.mark.parametrize(
    "mutate, error, words",
    [
        (lambda m: m["run_id"], BadInputError, "not a run message"),
        (lambda m: {**m, "extra": 1}, BadInputError, "not a run message"),
        (lambda m: {**m, "v": 2}, BadInputError, "version"),
        (lambda m: {**m, "run_id": "x" * 32}, BadInputError, "32 hex"),
        (lambda m: {**m, "run_id": "0" * 32}, BadInputError, "no run"),
        (lambda m: {**m, "request_signature": ""}, TrustError, "no well-formed request signature"),
        (lambda m: {**m, "request_signature": "A" * 86 + "=="}, TrustError, "not the requester's"),
    ],
)
def test_malformed_unknown_or_forged_messages_are_rejected(sc: Scenario, mutate: Any, error: type, words: str) -> None:
    run_id = _request(sc, 2)
    with pytest.raises(error, match=words):
        check_message(sc.node, mutate(run_message(sc.node, run_id)))
    assert get_run(sc.node, run_id).state == "requested"       # a bad message changes nothing


def test_redelivery_of_a_finished_run_changes_nothing(sc: Scenario) -> None:
    run_id = _request(sc, 3)
    first = _execute(sc, run_id)
    assert first["state"] == "released"
    size = sc.node.ledger.size()
    again = _execute(sc, run_id)
    assert again["state"] == "released" and again["result_digest"] == first["result_digest"]
    assert sc.node.ledger.size() == size
    assert outcomes_in_ledger(sc.node)[run_id] == 1
    assert spent_events(sc.node) == {run_id: pytest.approx(0.01)}


def _start_as_dead_worker(sc: Scenario, run_id: str, attempts: int = 1) -> None:
    """Leave ``run_id`` started by a worker process that no longer exists."""
    from opal.release import budget
    from opal.runs._tables import ensure_run_tables
    from opal.trust.keys import utcnow

    ensure_run_tables(sc.node.db)
    dead = "ghost-host:999999:000000"
    with sc.node.db.transaction() as tx:
        budget.reserve(tx, dataset=sc.dataset, run_id=run_id, epsilon=0.01, actor="x")
        tx.execute("UPDATE runs SET state = 'started' WHERE run_id = ?", (run_id,))
        tx.execute("INSERT INTO run_attempts(run_id, attempts, worker, claimed) VALUES (?,?,?,?)",
                   (run_id, attempts, dead, utcnow()))
        sc.node.ledger.append_in(tx, type="run_started", body={"run_id": run_id, "attempt": attempts},
                                 signer=sc.node.keyring.signer("olga"), subject="spin_count")


def test_run_of_a_dead_worker_is_taken_over_and_charged_once(sc: Scenario) -> None:
    run_id = _request(sc, 4)
    _start_as_dead_worker(sc, run_id)
    out = _execute(sc, run_id)
    assert out["state"] == "released"
    assert run_owner(sc.node, run_id)[0] == 2
    started = [e.body.get("attempt") for e in sc.node.ledger.entries(type="run_started") if e.body["run_id"] == run_id]
    assert started == [1, 2]
    assert spent_events(sc.node) == {run_id: pytest.approx(0.01)}
    budget = budget_of(sc.node, sc.dataset)
    assert budget["spent"] == pytest.approx(0.01) and budget["reserved"] == pytest.approx(0)
    sc.node.ledger.verify()


def test_run_held_by_a_live_worker_is_not_run_twice(sc: Scenario) -> None:
    from opal.worker.liveness import local_worker

    run_id = _request(sc, 5)
    _start_as_dead_worker(sc, run_id)
    alive = local_worker(sc.node)                      # this test process, heartbeat running
    with sc.node.db.transaction() as tx:
        tx.execute("UPDATE run_attempts SET worker = ? WHERE run_id = ?", (alive, run_id))
    out = _execute(sc, run_id, worker="another-worker:1:abc")
    assert out.get("dropped") and out["state"] == "started"
    assert outcomes_in_ledger(sc.node)[run_id] == 0


def test_a_run_that_keeps_losing_its_worker_is_failed_after_the_cap(sc: Scenario) -> None:
    run_id = _request(sc, 6)
    _start_as_dead_worker(sc, run_id, attempts=MAX_ATTEMPTS)
    out = _execute(sc, run_id)
    assert out["state"] == "failed"
    assert f"each of {MAX_ATTEMPTS} attempts" in out["error"]["message"]
    # it failed after touching the data (the lost attempts ran it): its ε is spent, once
    budget = budget_of(sc.node, sc.dataset)
    assert budget["spent"] == pytest.approx(0.01) and budget["reserved"] == pytest.approx(0)
    assert outcomes_in_ledger(sc.node)[run_id] == 1


def test_cancel_returns_budget_and_a_later_delivery_is_dropped(sc: Scenario) -> None:
    run_id = _request(sc, 7)
    _start_as_dead_worker(sc, run_id)
    with pytest.raises(TrustError, match="only its requester"):
        cancel_run(sc.node, run_id, signer=sc.node.keyring.signer("rita"))
    record = cancel_run(sc.node, run_id, signer=sc.node.keyring.signer("sam"))
    assert record.state == "cancelled"
    finished = [e for e in sc.node.ledger.entries(type="run_finished") if e.body["run_id"] == run_id]
    assert len(finished) == 1 and finished[0].body["outcome"] == "cancelled"
    assert finished[0].actor == sc.node.keyring.signer("sam").key_id
    assert finished[0].body["epsilon_returned"] == pytest.approx(0.01)
    out = _execute(sc, run_id)                                    # the message arrives after all
    assert out["state"] == "cancelled"
    assert outcomes_in_ledger(sc.node)[run_id] == 1
    assert spent_events(sc.node) == {}
    with pytest.raises(BadInputError, match="cancelled already"):
        cancel_run(sc.node, run_id, signer=sc.node.keyring.signer("sam"))
    sc.node.ledger.verify()


def test_cancelled_while_running_result_is_discarded(sc: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = _request(sc, 8)
    real = state.runtime_for

    class CancelsMidRun:
        def __init__(self, rt: Any) -> None:
            self.rt = rt

        def run(self, **kw: Any) -> Any:
            out = self.rt.run(**kw)
            cancel_run(sc.node, run_id, signer=sc.node.keyring.signer("sam"))
            return out

        def unit_count(self, column: str, table: str | None = None) -> int:
            return int(self.rt.unit_count(column, table=table))

    out = execute_run(sc.node, run_id, signer=sc.node.keyring.signer("olga"),
                      runtime_for=lambda ds: CancelsMidRun(real(ds)))
    assert out["state"] == "cancelled" and out["release"] is None
    assert [e.body["outcome"] for e in sc.node.ledger.entries(type="run_finished")] == ["cancelled"]
    assert spent_events(sc.node) == {}


def test_resident_dataset_is_reloaded_when_its_version_changes(sc: Scenario) -> None:
    import pyarrow.parquet as pq

    from opal.data import catalog

    ds = catalog.get(sc.node, sc.dataset)
    first = state.runtime_for(ds)
    assert state.runtime_for(catalog.get(sc.node, sc.dataset)) is first     # resident between runs
    table = pq.read_table(sc.data)
    pq.write_table(table.slice(0, table.num_rows // 2), sc.data)
    newer = catalog.refresh(sc.node, sc.dataset, signer=sc.node.keyring.signer("olga"))
    assert newer.version != ds.version
    second = state.runtime_for(newer)
    assert second is not first and state.resident() == {sc.dataset: newer.version}
    assert second.table_rows["cdr"] == table.num_rows // 2
    run_id = _request(sc, 9)
    assert _execute(sc, run_id)["state"] == "released"
    started = [e for e in sc.node.ledger.entries(type="run_started") if e.body["run_id"] == run_id]
    assert started[0].body["dataset_version"] == newer.version


def test_a_release_is_covered_by_a_signed_checkpoint(sc: Scenario) -> None:
    import time

    run_id = _request(sc, 10)
    _execute(sc, run_id)
    _execute(sc, _request(sc, 11))                       # within the interval: deferred, not lost
    time.sleep(0.6)
    cp = sc.node.ledger.latest_checkpoint()
    assert cp is not None and cp.size == sc.node.ledger.size()
