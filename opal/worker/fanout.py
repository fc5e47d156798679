"""A run on a partitioned dataset: one Celery task per partition, one combining task.

    opal.run ─ steps 1–4 (as any run) ─► chord(
        group(opal.run_partition(run, p) for each partition p),   steps 5–6a
        opal.combine_run(run))                                    steps 6b–7

Each partition task runs the sandbox on its partition (its own resident
runtime, its own pseudonyms), checks and bounds units and stores only the
partition's partial aggregate (distinct units and bounded sums per cell;
never contributions, never unit ids) in the node database, keyed by (run,
partition): a repeated or duplicated task finds the row and adds nothing.
The chord then calls the combining task, which adds the partials
(``bounding.combine``: exact, each unit lives in one partition), noises them
once (``gate.release_aggregate``), settles the budget once and appends
``run_finished`` (``pipeline.finish_released``, the same as a one-file run).

Total runs: a partition whose algorithm fails, or whose task is lost
``MAX_ATTEMPTS`` times (its worker killed each time), contributes no
contributions, like a one-file run whose algorithm failed. The requester gets
an ordinary noisy release over what completed; the operator's outcome names
the partitions and why. A combining task that finds a partition missing (a
chord fired early by a duplicated message, or a forged combine message)
retries until every partition has a partial, so it never releases early.

Only ids travel on the broker; the partial aggregates never cross it.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from opal.db import Database, ensure_tables
from opal.errors import OpalError
from opal.release.bounding import BoundedAggregate, combine, empty_aggregate
from opal.runs.records import TERMINAL_STATES, get_run
from opal.trust.keys import utcnow

if TYPE_CHECKING:
    from opal.data.catalog import Dataset
    from opal.node import Node
    from opal.runs.records import RunRecord
    from opal.sandbox import Runtime
    from opal.trust.keyring import Signer

__all__ = [
    "PARTS_MISSING", "combine_run", "fail_missing", "fan_out", "missing_parts", "partials", "resend", "run_partition",
]

log = logging.getLogger("opal.worker")

PARTS_MISSING = "partitions missing"

_TABLES = (
    """CREATE TABLE IF NOT EXISTS run_partials (
        run_id     TEXT NOT NULL,
        part       INTEGER NOT NULL,
        aggregate  TEXT NOT NULL,
        outcome    TEXT NOT NULL,
        worker     TEXT NOT NULL,
        created    TEXT NOT NULL,
        PRIMARY KEY (run_id, part)
    )""",
    """CREATE TABLE IF NOT EXISTS run_partition_attempts (
        run_id     TEXT NOT NULL,
        part       INTEGER NOT NULL,
        attempts   INTEGER NOT NULL,
        worker     TEXT NOT NULL,
        PRIMARY KEY (run_id, part)
    )""",
)


_done: weakref.WeakSet[Database] = weakref.WeakSet()


def _ensure(node: Node) -> None:
    ensure_tables(node.db, _TABLES, _done)


def fan_out(node: Node, record: RunRecord, *, parts: int) -> None:
    """Send the run's chord: a partition task per partition, then the combining task.

    Sent from the ``opal.run`` task, which returns at once: no task waits on another.
    """
    from celery import chord

    from opal.worker.celery import configure, queue_name
    from opal.worker.tasks import combine_task, partition_task

    _ensure(node)
    configure(node.home)
    queue = queue_name(node.home, record.dataset)
    header = [
        partition_task.si(record.run_id, p).set(queue=queue, task_id=f"{record.run_id}.p{p}") for p in range(parts)
    ]
    chord(header)(combine_task.si(record.run_id).set(queue=queue, task_id=f"{record.run_id}.combine"))
    log.info("run %s: %d partition tasks sent", record.run_id, parts)


def resend(node: Node, run_id: str, dataset: str, parts: list[int], *, tag: str) -> None:
    """A stalled run's missing partitions and its combining task, as a new chord (the
    recovery sweep's rescue); with nothing missing, the combining task alone. Task ids
    carry ``tag`` so they never collide with the first chord's."""
    from celery import chord

    from opal.worker.celery import configure, queue_name
    from opal.worker.tasks import combine_task, partition_task

    _ensure(node)
    configure(node.home)
    queue = queue_name(node.home, dataset)
    combine = combine_task.si(run_id).set(queue=queue, task_id=f"{run_id}.combine.{tag}")
    if not parts:
        combine.apply_async()
        return
    header = [partition_task.si(run_id, p).set(queue=queue, task_id=f"{run_id}.p{p}.{tag}") for p in parts]
    chord(header)(combine)


def _claim(node: Node, run_id: str, part: int, me: str) -> int | None:
    """Count a start of (run, part); None when it has a partial already."""
    with node.db.transaction() as tx:
        if tx.execute("SELECT 1 FROM run_partials WHERE run_id = ? AND part = ?", (run_id, part)).fetchone():
            return None
        row = tx.execute(
            "SELECT attempts FROM run_partition_attempts WHERE run_id = ? AND part = ?", (run_id, part)
        ).fetchone()
        attempts = (int(row[0]) if row else 0) + 1
        tx.execute(
            "INSERT OR REPLACE INTO run_partition_attempts(run_id, part, attempts, worker) VALUES (?,?,?,?)",
            (run_id, part, attempts, me),
        )
    return attempts


def _store(node: Node, run_id: str, part: int, agg: BoundedAggregate, outcome: dict[str, Any], me: str) -> bool:
    """Keep the partition's partial unless one is kept already (idempotent by (run, part))."""
    with node.db.transaction() as tx:
        cur = tx.execute(
            "INSERT OR IGNORE INTO run_partials(run_id, part, aggregate, outcome, worker, created) "
            "VALUES (?,?,?,?,?,?)",
            (run_id, part, json.dumps(agg.to_dict()), json.dumps(outcome), me, utcnow()),
        )
        return bool(getattr(cur, "rowcount", 1))


def run_partition(node: Node, run_id: str, part: int, *, runtime_for: Any, me: str) -> dict[str, Any]:
    """Steps 5–6a of ``run_id`` on partition ``part``: store its partial aggregate once.

    Never raises for what the algorithm or the data did (the run is total);
    a fault before the data is touched stores nothing, the combining task
    then finds the partition missing and the run fails by the usual rules.
    """
    from opal.release.gate import domain_cells, partial_aggregate
    from opal.worker.pipeline import MAX_ATTEMPTS, prepare, sandbox_contributions

    _ensure(node)
    record = get_run(node, run_id)
    if record.state != "started":
        return {"run_id": run_id, "part": part, "skipped": record.state}
    prep = prepare(node, record)
    ds, manifest = prep.ds, prep.manifest
    files = ds.partition_files()
    if not 0 <= part < len(files):
        return {"run_id": run_id, "part": part, "skipped": "no such partition"}
    attempts = _claim(node, run_id, part, me)
    if attempts is None:
        return {"run_id": run_id, "part": part, "skipped": "done already"}
    if attempts > MAX_ATTEMPTS:
        # a partition that keeps killing its worker contributes nothing (total runs)
        agg = empty_aggregate(manifest.privacy, domain_cells(manifest.privacy, prep.domains))
        outcome: dict[str, Any] = {"outcome": "partition lost", "attempts": attempts - 1}
    else:
        t0 = time.monotonic()
        runtime: Runtime = runtime_for(ds, part, read=manifest.read_map(), categorical=manifest.categorical_map())
        t1 = time.monotonic()
        try:
            contributions, units, outcome = sandbox_contributions(
                runtime, prep.bundle.source, manifest.entrypoint, record, ds, manifest.privacy,
                read=manifest.read_map(), categorical=manifest.categorical_map(),
            )
            t2 = time.monotonic()
            agg = partial_aggregate(contributions, privacy=manifest.privacy, domains=prep.domains, known_units=units)
            del contributions
            # where a task's time goes (docs/scale.md), for the operator's log only
            log.debug("run %s partition %d: runtime %.3f s, sandbox %.3f s, partial aggregate %.3f s",
                      run_id, part, t1 - t0, t2 - t1, time.monotonic() - t2)
        except Exception as exc:  # noqa: BLE001 - total runs: a fault on data is no contributions, stored at once
            # (a partition left missing would delay the release until the combiner gives up: a timing channel)
            log.error("run %s partition %d: no partial aggregate (%s)", run_id, part, type(exc).__name__)
            agg = empty_aggregate(manifest.privacy, domain_cells(manifest.privacy, prep.domains))
            outcome = {"outcome": "no contributions", "error_type": type(exc).__name__, "where": "partition"}
        if agg.refused is not None and outcome["outcome"] == "ok":
            outcome = {"outcome": "contributions refused", "message": agg.refused}
    stored = _store(node, run_id, part, agg, outcome, me)
    return {"run_id": run_id, "part": part, "stored": stored}


def partials(node: Node, run_id: str) -> dict[int, tuple[BoundedAggregate, dict[str, Any]]]:
    """The stored partial aggregates of ``run_id`` by partition (exact: the operator's only)."""
    _ensure(node)
    rows = node.db.query("SELECT part, aggregate, outcome FROM run_partials WHERE run_id = ? ORDER BY part", (run_id,))
    return {
        int(r["part"]): (BoundedAggregate.from_dict(json.loads(r["aggregate"])), json.loads(r["outcome"]))
        for r in rows
    }


def combine_run(node: Node, run_id: str, *, signer: Signer) -> dict[str, Any] | None:
    """Steps 6b–7: add the partials, noise once, settle the budget once, record.

    Returns None while a partition has no partial yet (the caller retries);
    the run's outcome otherwise (the recorded one, if it has one already).
    """
    from opal.release.gate import release_aggregate
    from opal.worker.pipeline import Dropped, fail_run, finish_released, outcome_of, prepare

    _ensure(node)
    record = get_run(node, run_id)
    if record.state in TERMINAL_STATES or record.state != "started":
        return outcome_of(record)
    try:
        prep = prepare(node, record)
        ds: Dataset = prep.ds
        got = partials(node, run_id)
        parts = len(ds.partition_files())
        if len(got) < parts:
            return None
        agg = combine([got[p][0] for p in range(parts)])
        released = release_aggregate(
            agg, privacy=prep.manifest.privacy, domains=prep.domains, policy=ds.policy, epsilon=record.epsilon
        )
        notes = {str(p): o for p, (_, o) in got.items() if o.get("outcome") != "ok"}
        outcome: dict[str, Any] = {"outcome": "ok", "partitions": parts}
        if notes:
            outcome = {"outcome": "partitions without contributions", "partitions": parts, "by_partition": notes}
        return finish_released(node, record, released, outcome, signer=signer)
    except Dropped:
        return outcome_of(get_run(node, run_id))
    except OpalError as exc:
        return fail_run(node, record, exc, signer=signer)


def missing_parts(node: Node, run_id: str, parts: int) -> list[int]:
    return sorted(set(range(parts)) - set(partials(node, run_id)))


def fail_missing(node: Node, run_id: str, *, signer: Signer) -> dict[str, Any]:
    """Give up on the partitions still missing: each contributes nothing, then combine."""
    from opal.release.gate import domain_cells
    from opal.worker.pipeline import fail_run, outcome_of, prepare

    record = get_run(node, run_id)
    if record.state != "started":
        return outcome_of(record)
    try:
        prep = prepare(node, record)
    except OpalError as exc:
        return fail_run(node, record, exc, signer=signer)
    nothing = empty_aggregate(prep.manifest.privacy, domain_cells(prep.manifest.privacy, prep.domains))
    for part in missing_parts(node, run_id, len(prep.ds.partition_files())):
        _store(node, run_id, part, nothing, {"outcome": PARTS_MISSING}, "combiner")
    out = combine_run(node, run_id, signer=signer)
    assert out is not None  # every partition has a partial now
    return out
