"""A run on a partitioned dataset, through real Celery workers and Redis:
one task per partition, one combining step that noises once and charges once."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from benchmarks.scenario import Scenario, build
from opal.bundle.registry import Bundle
from opal.data import catalog
from opal.data.partition import node_key, partition
from opal.release.bounding import combine
from opal.runs import get_run, request_run
from opal.runs.dispatch import dispatch, wait
from opal.trust.review import approve, submit
from opal.worker import state
from opal.worker.fanout import partials
from tests.conftest import wait_for
from tests.worker.workerkit import SPIN_PER_SECOND, Workers, outcomes_in_ledger, spent_events

PARTS = 4
REGION_COUNT = "region_count"

# Every subscriber in every region they were seen in: no unit has more cells
# than max_groups_per_unit (12 regions), so bounding selects nothing at random
# and the pre-noise aggregate is exact, cell for cell.
_MANIFEST = """\
name = "region_count"
version = "1.0.0"
description = "Distinct subscribers seen per region (tests)"
entrypoint = "contributions"
dataset = "cdr"

[privacy]
unit = "msisdn"
aggregation = "count"
max_groups_per_unit = 12

[privacy.groups]
region = "dataset"

[parameters]
type = "object"
additionalProperties = false

[parameters.properties.spin]
type = "integer"
minimum = 0
"""

_SOURCE = '''\
def contributions(data, params):
    n = 0
    for i in range(params.get("spin", 0)):
        n += 1
    return data.cdr[["msisdn", "region"]].drop_duplicates()
'''


def _with_partitions(sc: Scenario, parts: int = PARTS) -> str:
    """Register a partitioned copy of the scenario's data as ``demo_parts``; approve region_count."""
    node = sc.node
    folder = sc.data.parent / "parts"
    partition(sc.data, folder, parts=parts, key=node_key(node.home), unit="msisdn")
    (sc.data.parent / "parts.domains.toml").write_bytes((sc.data.parent / "cdr.domains.toml").read_bytes())
    catalog.register(node, "demo_parts", folder, schema="cdr", signer=node.keyring.signer("olga"))
    bundle_dir = node.home.root / "bundles" / REGION_COUNT
    bundle_dir.mkdir(parents=True)
    (bundle_dir / "opal.toml").write_text(_MANIFEST)
    (bundle_dir / "algorithm.py").write_text(_SOURCE)
    bundle = Bundle.from_folder(bundle_dir)
    submit(node, bundle, signer=node.keyring.signer("sam"))
    for reviewer in ("rita", "ravi"):
        approve(node, bundle.digest, signer=node.keyring.signer(reviewer))
    return "demo_parts"


def _truth(sc: Scenario) -> dict[str, int]:
    cdr = pd.read_parquet(sc.data, columns=["msisdn", "region"])
    return {str(k): int(v) for k, v in cdr.groupby("region")["msisdn"].nunique().items()}


def _request(sc: Scenario, dataset: str, *, eps: float = 1.0, algorithm: str = REGION_COUNT, **params: Any) -> str:
    node = sc.node
    record = request_run(node, algorithm=algorithm, dataset=dataset, params=params, epsilon=eps,
                         signer=node.keyring.signer("sam"))
    dispatch(node, record)
    return record.run_id


def _combined_truth_cells(sc: Scenario, run_id: str) -> dict[str, int]:
    node = sc.node
    ds = catalog.get(node, "demo_parts")
    got = partials(node, run_id)
    assert sorted(got) == list(range(PARTS))
    agg = combine([got[p][0] for p in range(PARTS)])
    return dict(zip(ds.domains["region"], (int(v) for v in agg.units), strict=True))


def _assert_within_intervals(release: dict[str, Any], truth: dict[str, int]) -> None:
    columns = release["table"]["columns"]
    for row in release["table"]["rows"]:
        cell = dict(zip(columns, row, strict=True))
        if cell["suppressed"]:
            continue
        half = (cell["ci_high"] - cell["ci_low"]) / 2
        # 3 half-widths: P(|noise| > 3k) < 0.02 % a cell, so the test does not flake
        assert abs(cell["count"] - truth[cell["region"]]) <= 3 * half + 1, (cell, truth[cell["region"]])


def _assert_charged_once(sc: Scenario, run_id: str, eps: float) -> None:
    assert outcomes_in_ledger(sc.node)[run_id] == 1
    assert spent_events(sc.node)[run_id] == pytest.approx(eps)


@pytest.fixture
def sc(tmp_path: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scenario]:
    monkeypatch.setenv("OPAL_BROKER_URL", broker_url)
    monkeypatch.setenv("OPAL_RECOVERY_INTERVAL", "0")
    scenario = build(tmp_path / "home", subscribers=600, days=2)
    yield scenario
    state.close_runtimes()


@pytest.fixture
def workers(sc: Scenario, broker_url: str) -> Iterator[Workers]:
    w = Workers(home=sc.node.home.root, broker_url=broker_url, extra_env={"OPAL_RECOVERY_INTERVAL": "0"})
    yield w
    w.stop_all()


def test_partitioned_run_releases_the_ground_truth_within_its_intervals(sc: Scenario, workers: Workers) -> None:
    dataset = _with_partitions(sc)
    workers.start(dataset, concurrency=2)
    run_id = _request(sc, dataset)
    record = wait(sc.node, run_id, timeout=180)
    assert record.state == "released", record.error
    truth = _truth(sc)
    # exact: the partial aggregates add up to the unpartitioned ground truth, cell for cell
    assert _combined_truth_cells(sc, run_id) == {r: truth.get(r, 0) for r in truth}
    _assert_within_intervals(record.result, truth)
    _assert_charged_once(sc, run_id, 1.0)
    started = [e for e in sc.node.ledger.entries(type="run_started") if e.body["run_id"] == run_id]
    assert len(started) == 1


def test_a_worker_that_holds_less_than_a_partition_streams_them_and_counts_exactly(
        sc: Scenario, workers: Workers) -> None:
    # --memory below one partition: every task loads its partition into the pool
    # process's one zygote (reloaded, not restarted); nothing is counted twice or lost
    dataset = _with_partitions(sc)
    workers.start(dataset, concurrency=1, memory="1M")
    run_ids = [_request(sc, dataset, eps=0.5), _request(sc, dataset, eps=0.25)]
    truth = _truth(sc)
    for run_id, eps in zip(run_ids, (0.5, 0.25), strict=True):
        record = wait(sc.node, run_id, timeout=180)
        assert record.state == "released", record.error
        assert _combined_truth_cells(sc, run_id) == {r: truth.get(r, 0) for r in truth}
        _assert_charged_once(sc, run_id, eps)


def test_partitioned_release_matches_the_one_file_release(sc: Scenario, workers: Workers) -> None:
    dataset = _with_partitions(sc)
    workers.start(dataset, concurrency=1)
    workers.start(sc.dataset, concurrency=1)
    parted = wait(sc.node, _request(sc, dataset), timeout=180)
    whole = wait(sc.node, _request(sc, sc.dataset), timeout=180)
    assert parted.state == whole.state == "released"
    assert parted.result["table"]["columns"] == whole.result["table"]["columns"]
    regions = [row[0] for row in parted.result["table"]["rows"]]
    assert regions == [row[0] for row in whole.result["table"]["rows"]]   # same public cells, same order
    truth = _truth(sc)
    _assert_within_intervals(parted.result, truth)
    _assert_within_intervals(whole.result, truth)


def test_a_bundle_asking_for_categoricals_gets_them_from_every_worker_path(sc: Scenario, workers: Workers) -> None:
    """``categorical`` reaches the sandbox on a one-file run, on a partition
    task whose zygote starts with it, and on one reloaded with it: the
    algorithm reads ``region.cat``, which text has not, so a path that
    dropped the flag would leave the run without contributions."""
    from opal.runs.records import run_decisions

    dataset = _with_partitions(sc)
    node = sc.node
    bundle_dir = node.home.root / "bundles" / "region_codes"
    bundle_dir.mkdir(parents=True)
    manifest = _MANIFEST.replace('name = "region_count"', 'name = "region_codes"').replace(
        'dataset = "cdr"\n', 'dataset = "cdr"\nreads = ["msisdn", "region"]\ncategorical = ["region"]\n')
    (bundle_dir / "opal.toml").write_text(manifest)
    (bundle_dir / "algorithm.py").write_text(
        "import opal\n"
        "def contributions(data, params):\n"
        "    cdr = data.cdr\n"
        "    seen = cdr[cdr['region'].cat.codes >= 0]\n"
        "    return opal.distinct(seen, ['msisdn', 'region'])\n"
    )
    bundle = Bundle.from_folder(bundle_dir)
    assert bundle.manifest.categorical == ("region",)
    submit(node, bundle, signer=node.keyring.signer("sam"))
    for reviewer in ("rita", "ravi"):
        approve(node, bundle.digest, signer=node.keyring.signer(reviewer))
    workers.start(dataset, concurrency=1, memory="1M")   # every partition task reloads the one zygote
    workers.start(sc.dataset, concurrency=1)
    parted = _request(sc, dataset, algorithm="region_codes")
    whole = wait(node, _request(sc, sc.dataset, algorithm="region_codes"), timeout=180)
    truth = _truth(sc)
    assert wait(node, parted, timeout=180).state == whole.state == "released"
    assert _combined_truth_cells(sc, parted) == {r: truth.get(r, 0) for r in truth}
    assert all(p[1] == {"outcome": "ok"} for p in partials(node, parted).values())
    assert run_decisions(node, whole.run_id)["run_outcome"] == {"outcome": "ok"}   # the one file, resident
    _assert_within_intervals(whole.result, truth)


def test_duplicated_partition_tasks_and_an_early_combine_do_not_double_count(
        sc: Scenario, workers: Workers) -> None:
    from opal.worker.celery import configure, queue_name
    from opal.worker.tasks import COMBINE_TASK, PARTITION_TASK

    dataset = _with_partitions(sc)
    workers.start(dataset, concurrency=2)
    run_id = _request(sc, dataset, spin=SPIN_PER_SECOND // 2)
    app = configure(sc.node.home)
    queue = queue_name(sc.node.home, dataset)
    # a forged combine before any partition is done, then every partition task twice more
    app.send_task(COMBINE_TASK, args=[run_id], queue=queue)
    for _ in range(2):
        for part in range(PARTS):
            app.send_task(PARTITION_TASK, args=[run_id, part], queue=queue)
    record = wait(sc.node, run_id, timeout=180)
    assert record.state == "released", record.error
    truth = _truth(sc)
    assert _combined_truth_cells(sc, run_id) == truth
    _assert_charged_once(sc, run_id, 1.0)
    # the duplicates finish after the release and change nothing
    time.sleep(3)
    assert _combined_truth_cells(sc, run_id) == truth
    _assert_charged_once(sc, run_id, 1.0)


def _kill_a_partition_task(sc: Scenario, workers: Workers, run_id: str) -> int:
    """SIGKILL the pool process running one of the run's partitions; its partition number."""
    deadline = time.monotonic() + 120
    row = None
    while time.monotonic() < deadline and row is None:
        try:
            row = sc.node.db.one(
                "SELECT part, worker FROM run_partition_attempts WHERE run_id = ? AND part NOT IN "
                "(SELECT part FROM run_partials WHERE run_id = ?)", (run_id, run_id))
        except Exception:  # noqa: BLE001 - the table appears with the first partition task
            row = None
        time.sleep(0.05)
    assert row is not None, workers.logs()[-3000:]
    time.sleep(0.5)
    os.kill(int(row["worker"].split(":")[1]), signal.SIGKILL)
    return int(row["part"])


def test_a_killed_partition_task_is_redelivered_and_counted_once(sc: Scenario, workers: Workers) -> None:
    dataset = _with_partitions(sc)
    workers.start(dataset, concurrency=1)
    run_id = _request(sc, dataset, spin=3 * SPIN_PER_SECOND)
    part = _kill_a_partition_task(sc, workers, run_id)
    record = wait(sc.node, run_id, timeout=180)
    assert record.state == "released", record.error
    attempts = sc.node.db.one("SELECT attempts FROM run_partition_attempts WHERE run_id = ? AND part = ?",
                              (run_id, part))["attempts"]
    assert attempts == 2
    assert _combined_truth_cells(sc, run_id) == _truth(sc)
    _assert_charged_once(sc, run_id, 1.0)
    assert get_run(sc.node, run_id).state == "released"


def test_a_partition_lost_every_attempt_releases_over_the_others_charged_once(
        sc: Scenario, workers: Workers) -> None:
    from opal.runs.records import run_decisions

    workers.extra_env["OPAL_MAX_ATTEMPTS"] = "1"
    dataset = _with_partitions(sc)
    workers.start(dataset, concurrency=1)
    run_id = _request(sc, dataset, spin=3 * SPIN_PER_SECOND)
    part = _kill_a_partition_task(sc, workers, run_id)
    record = wait(sc.node, run_id, timeout=180)
    # the requester sees an ordinary release over the whole domain, charged once
    assert record.state == "released", record.error
    assert len(record.result["table"]["rows"]) == len(catalog.get(sc.node, dataset).domains["region"])
    _assert_charged_once(sc, run_id, 1.0)
    got = partials(sc.node, run_id)
    assert got[part][1] == {"outcome": "partition lost", "attempts": 1}
    assert int(got[part][0].units.sum()) == 0
    # the others add up to the truth of their own units; the operator is told which partition and why
    assert sum(int(a.units.sum()) for p, (a, _) in got.items() if p != part) > 0
    outcome = run_decisions(sc.node, run_id)["run_outcome"]
    assert outcome["outcome"] == "partitions without contributions"
    assert outcome["by_partition"] == {str(part): {"outcome": "partition lost", "attempts": 1}}


def test_a_fan_out_whose_partition_messages_were_lost_is_rescued_by_the_sweep(sc: Scenario, broker_url: str) -> None:
    """The run task returned after sending the chord, so its worker being alive proves nothing: when
    the queued partition messages are lost (a Redis flush), the sweep sees no progress for longer
    than a partition may take and sends the missing partitions and the combine again."""
    from opal.worker.celery import queue_name
    from opal.worker.recovery import broker_redis, queue_keys

    dataset = _with_partitions(sc)
    workers = Workers(home=sc.node.home.root, broker_url=broker_url,
                      extra_env={"OPAL_RECOVERY_INTERVAL": "1", "OPAL_RUN_TIMEOUT": "5"})
    try:
        workers.start(dataset, concurrency=1)
        run_id = _request(sc, dataset, spin=SPIN_PER_SECOND // 2)
        def partition_started() -> bool:
            try:
                return sc.node.db.one("SELECT 1 FROM run_partition_attempts WHERE run_id = ?", (run_id,)) is not None
            except Exception:  # noqa: BLE001 - the table appears with the first partition task
                return False

        assert wait_for(partition_started, timeout=120, interval=0.02)
        client = broker_redis(broker_url)
        lost = sum(client.delete(key) for key in queue_keys(queue_name(sc.node.home, dataset)))
        assert lost >= 1, "partition messages were still queued"
        record = wait(sc.node, run_id, timeout=120)
        assert record.state == "released", record.error
        # every partition ran (none filled with nothing), the release is charged once
        assert {o["outcome"] for _, o in partials(sc.node, run_id).values()} == {"ok"}
        assert _combined_truth_cells(sc, run_id) == _truth(sc)
        _assert_charged_once(sc, run_id, 1.0)
        assert sc.node.db.one("SELECT rescues FROM run_rescues WHERE run_id = ?", (run_id,))["rescues"] == 1
    finally:
        workers.stop_all()


def test_two_nodes_sharing_postgresql_redis_and_the_partitions_release_what_one_node_does(
        tmp_path: Path, broker_url: str, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two homes (two nodes: each its own OPAL_HOME, its own operator key, its own workers) on one
    PostgreSQL history, one Redis and the partition files on shared storage."""
    from opal.node import Node

    prefix = "opal.parts." + secrets.token_hex(4)   # both nodes' queues for the dataset
    monkeypatch.setenv("OPAL_BROKER_URL", broker_url)
    monkeypatch.setenv("OPAL_DB_URL", pg_url)
    monkeypatch.setenv("OPAL_QUEUE_PREFIX", prefix)
    sc = build(tmp_path / "node-a", subscribers=600, days=2)
    dataset = _with_partitions(sc)
    # node B: its own home and operator key, which the board (on node A's side) records
    node_b = Node.open(tmp_path / "node-b")
    node_b.keyring.new("otto", "operator", node_b.ledger, by=sc.node.keyring.signer("bea"))
    env = {"OPAL_RECOVERY_INTERVAL": "0", "OPAL_QUEUE_PREFIX": prefix}
    node_a_workers = Workers(home=sc.node.home.root, broker_url=broker_url, extra_env=env)
    node_b_workers = Workers(home=node_b.home.root, broker_url=broker_url, extra_env=env)
    try:
        node_a_workers.start(dataset, concurrency=1)
        one_node = wait(sc.node, _request(sc, dataset, spin=SPIN_PER_SECOND // 4), timeout=180)
        node_b_workers.start(dataset, key="otto", concurrency=1)     # a second node on the same queue
        run_id = _request(sc, dataset, spin=SPIN_PER_SECOND // 4 + 1)   # not the cached identical run
        two_nodes = wait(sc.node, run_id, timeout=180)
        assert one_node.state == two_nodes.state == "released", (one_node.error, two_nodes.error)
        # each node runs one worker with one pool process: two serving processes are both nodes
        servers = {row["worker"].split(":")[1] for row in sc.node.db.query(
            "SELECT worker FROM run_partials WHERE run_id = ?", (run_id,))}
        assert len(servers) == 2, "both nodes served partitions of the run"
        # exact: the pre-noise aggregates of both runs are the same, cell for cell
        truth = _truth(sc)
        assert _combined_truth_cells(sc, one_node.run_id) == _combined_truth_cells(sc, run_id) == truth
        _assert_within_intervals(two_nodes.result, truth)
        _assert_charged_once(sc, run_id, 1.0)
        # one history, verified from either home
        assert sc.node.ledger.verify().root == Node.open(node_b.home.root).ledger.verify().root
    finally:
        node_a_workers.stop_all()
        node_b_workers.stop_all()
        state.close_runtimes()
