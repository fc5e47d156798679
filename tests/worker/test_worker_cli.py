"""The operator's and statistician's verbs through the real CLI and a real worker."""

from __future__ import annotations

import json
import re
import time

import pytest

from benchmarks.scenario import build
from tests.conftest import Opal, wait_for
from tests.worker.workerkit import SPIN_PER_SECOND, Workers


def test_run_no_wait_prints_only_the_id_then_runs_and_status_follow_it(opal: Opal) -> None:
    build(opal.home, subscribers=300, days=1)
    workers = Workers(home=opal.home, broker_url=opal.broker_url)
    try:
        workers.start(concurrency=2)
        slow = opal("run", "spin_count", "--dataset", "demo", "--params",
                    json.dumps({"tag": 1, "spin": 5 * SPIN_PER_SECOND}), "--epsilon", "0.1", "--no-wait", "--key", "sam")
        assert slow.returncode == 0, slow.stderr
        assert re.fullmatch(r"[0-9a-f]{32}\n", slow.stdout)
        run_id = slow.stdout.strip()

        def in_flight() -> dict | None:
            doc = opal.json("worker", "status")
            return doc if doc["runs_in_flight"] == 1 else None

        doc = wait_for(in_flight, timeout=60, interval=0.3)
        (worker,) = doc["workers"]
        assert worker["datasets"] == ["demo"] and worker["concurrency"] == 2
        assert worker["runs_in_flight"][0]["run_id"] == run_id
        assert doc["queues"] == [{"dataset": "demo", "queue": worker["queues"][0], "depth": 0}]
        assert sum(doc["runs"].values()) == 1 and set(doc["runs"]) <= {"started", "released"}
        human = opal("worker", "status")
        assert "demo" in human.stdout and human.returncode == 0

        fast = opal("run", "spin_count", "--dataset", "demo", "--params", '{"tag": 2}', "--epsilon", "0.1", "--key", "sam")
        assert fast.returncode == 0, fast.stderr
        assert "released" in fast.stderr          # progress on stderr, the table on stdout
        shown = opal.json("runs", "show", run_id)
        assert shown["state"] in ("started", "released")
        wait_for(lambda: opal.json("runs", "show", run_id)["state"] == "released", timeout=60, interval=0.3)
        listed = opal.json("runs", "list")
        assert {r["run_id"] for r in listed} >= {run_id} and all(r["state"] == "released" for r in listed)
        table = opal("runs", "list", check=True).stdout      # piped: no 80-column cut
        row = next(line for line in table.splitlines() if run_id in line)
        assert "spin_count" in row and " sam " in row and "released" in row
        result = opal.json("runs", "result", run_id)
        assert result["run_id"] == run_id
    finally:
        workers.stop_all()


def test_cancel_a_queued_run_returns_its_budget_and_it_never_runs(opal: Opal) -> None:
    build(opal.home, subscribers=300, days=1)
    proc = opal("run", "spin_count", "--dataset", "demo", "--params", '{"tag": 1}', "--epsilon", "0.5",
                "--no-wait", "--key", "sam")                     # no worker: it waits in the queue
    run_id = proc.stdout.strip()
    opal("keys", "new", "stan", "--role", "statistician", check=True)
    other = opal("runs", "cancel", run_id, "--key", "stan")
    assert other.returncode == 6 and "only its requester" in other.stderr
    assert opal.json("runs", "cancel", run_id, "--key", "sam")["state"] == "cancelled"
    again = opal("runs", "cancel", run_id, "--key", "sam")
    assert again.returncode == 2 and "cancelled already" in again.stderr
    workers = Workers(home=opal.home, broker_url=opal.broker_url)
    try:
        workers.start()
        time.sleep(1.5)                                          # the queued message is delivered and dropped
        assert opal.json("runs", "show", run_id)["state"] == "cancelled"
        finished = opal.json("ledger", "show", "--type", "run_finished")
        assert [e["body"]["outcome"] for e in finished] == ["cancelled"]
        assert opal.json("budget", "show")[0]["spent"] == 0
        result = opal("runs", "result", run_id)
        assert result.returncode == 3 and "cancelled by its requester" in result.stderr
    finally:
        workers.stop_all()
    assert opal("ledger", "verify").returncode == 0


def test_recover_without_a_broker_says_how_to_fix_it(opal: Opal, monkeypatch: pytest.MonkeyPatch) -> None:
    build(opal.home, subscribers=300, days=1)
    opal.broker_url = "redis://127.0.0.1:1/0"                    # nothing listens there
    t0 = time.monotonic()
    proc = opal("run", "spin_count", "--dataset", "demo", "--params", '{"tag": 1}', "--key", "sam", "--no-wait")
    assert proc.returncode == 1 and "opal worker recover" in proc.stderr
    assert time.monotonic() - t0 < 30
    assert opal.json("runs", "list")[0]["state"] == "requested"  # recorded all the same
    rec = opal("worker", "recover")
    assert rec.returncode == 1 and "cannot reach the broker" in rec.stderr


_SUBMIT_MANY = """
import json, sys, time
from opal.client import Client
from opal.errors import BadInputError
client = Client(home=sys.argv[1], key="sam")
started = time.perf_counter()
ids = [client.submit("spin_count", dataset="demo", params={"tag": i}, epsilon=0.01) for i in range(40)]
submitted = time.perf_counter() - started
try:
    client.submit("spin_count", dataset="nope", params={"tag": 0}, epsilon=0.01)
    refused = ""
except BadInputError as exc:
    refused = exc.message
tables = [len(client.wait(i, timeout=120).table) for i in ids]
print(json.dumps({"ids": ids, "rate": len(ids) / submitted, "refused": refused, "tables": tables}))
"""


def test_the_client_submits_many_runs_from_one_process_then_waits_for_each(opal: Opal) -> None:
    """`Client.submit` is `opal run --no-wait` without a process (and its imports) per request."""
    import subprocess
    import sys

    build(opal.home, subscribers=300, days=1)
    workers = Workers(home=opal.home, broker_url=opal.broker_url)
    try:
        workers.start(concurrency=2)
        proc = subprocess.run([sys.executable, "-c", _SUBMIT_MANY, str(opal.home)], env=opal.env, text=True,
                              capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert len(set(out["ids"])) == 40 and all(n > 0 for n in out["tables"])
        assert "nope" in out["refused"]
        listed = {r["run_id"]: r["state"] for r in opal.json("runs", "list", "--limit", "100")}  # type: ignore[union-attr]
        assert all(listed[i] == "released" for i in out["ids"])
        print(f"client submits: {out['rate']:.0f} runs/s")  # informative; speed lives in make bench
    finally:
        workers.stop_all()
