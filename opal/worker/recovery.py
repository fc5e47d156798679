"""Finding runs that lost their message or their worker, and finishing them.

The ledger and the ``runs`` table are the truth; the broker only carries
messages. A run without an outcome is in one of these situations:

- its message waits in its dataset's queue: nothing to do;
- it is started and its worker process is alive (fresh heartbeat, and on this
  host a live pid): it is in flight, nothing to do;
- otherwise its message was lost (a Redis restart, a request recorded while
  the broker was down) or its worker died (``kill -9``, a lost machine): it is
  re-dispatched — the next delivery re-executes it, once budget was reserved
  it stays reserved, and the outcome is recorded exactly once — unless it
  already used ``MAX_ATTEMPTS`` attempts, then it is failed and its ε returned;
- a run fanned out over partitions whose owner is alive (its ``opal.run``
  task returned at once, so a live owner proves nothing) but which made no
  progress for longer than a partition may take (the run timeout plus two
  sweeps): a partition message or the chord was lost. Its missing partitions
  and the combining task are sent again as a new chord (each task is
  idempotent); after ``MAX_ATTEMPTS`` such rescues the missing partitions
  contribute nothing and the run is combined (total runs: charged once).

Run by ``opal worker recover``, by every worker when it starts, and by every
worker periodically (``sweep``), one node at a time under a lease.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opal.data import catalog
from opal.db import Database, ensure_tables
from opal.errors import InternalError, OpalError
from opal.runs._tables import ensure_run_tables
from opal.runs.dispatch import dispatch_many
from opal.runs.records import get_run
from opal.worker.liveness import is_alive, take_lease
from opal.worker.pipeline import MAX_ATTEMPTS, fail_run, run_owner

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.keyring import Signer

__all__ = [
    "DEFAULT_SWEEP_SECONDS", "RecoveryReport", "broker_redis", "queue_keys", "queued_run_ids", "recover",
    "start_sweeper",
]

log = logging.getLogger("opal.worker")

# kombu's Redis transport: one list per queue and priority step, and the
# hash + sorted set of delivered, unacknowledged messages.
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEP = "\x06\x16"
_UNACKED = "unacked"
_UNACKED_INDEX = "unacked_index"
# Every worker sweeps this often (OPAL_RECOVERY_INTERVAL overrides it); a run
# requested less than a sweep ago may still be on its way to the queue.
DEFAULT_SWEEP_SECONDS = 30.0


@dataclass
class RecoveryReport:
    redispatched: list[str] = field(default_factory=list)
    rescued: list[str] = field(default_factory=list)  # fanned-out runs whose chord was sent again
    failed: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "redispatched": self.redispatched,
            "rescued": self.rescued,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "queued": self.queued,
        }


def broker_redis(url: str) -> Any:
    """A redis-py client for a kombu broker URL (``redis://``, ``rediss://``, ``redis+socket://``)."""
    import redis

    if url.startswith(("redis+socket://", "socket://")):
        rest = url.split("://", 1)[1]
        path, _, query = rest.partition("?")
        db = 0
        for part in query.split("&"):
            if part.startswith(("virtual_host=", "db=")):
                db = int(part.split("=", 1)[1] or 0)
        return redis.Redis(unix_socket_path=path, db=db, socket_timeout=10)
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def queue_keys(queue: str) -> list[str]:
    return [queue if p == 0 else f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS]


def _message_id(raw: bytes | str) -> str | None:
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an unacked entry: [message, exchange, routing key]
            message = message[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def queued_run_ids(client: Any, queues: list[str]) -> set[str]:
    found: set[str] = set()
    for q in queues:
        for key in queue_keys(q):
            for raw in client.lrange(key, 0, -1):
                mid = _message_id(raw)
                if mid:
                    found.add(mid)
    return found


def _unacked_tags(client: Any, run_ids: set[str]) -> dict[str, list[bytes]]:
    tags: dict[str, list[bytes]] = {}
    for tag, raw in client.hscan_iter(_UNACKED, count=1000):
        mid = _message_id(raw)
        if mid in run_ids:
            tags.setdefault(mid, []).append(tag)
    return tags


def recover(
    node: Node, *, signer: Signer, dataset: str | None = None, min_age: float = 0.0
) -> RecoveryReport:
    """Re-dispatch or fail every run without an outcome that nothing is working on.

    A ``requested`` run younger than ``min_age`` seconds is left alone: its
    requester may be publishing it right now.

    Raises:
        InternalError: the broker is unreachable (nothing was changed).
    """
    import redis

    from opal.worker.celery import broker_url, queue_name

    ensure_run_tables(node.db)
    sql = "SELECT run_id, dataset, state, created FROM runs WHERE state IN ('requested', 'started')"
    params: tuple[Any, ...] = ()
    if dataset:
        sql += " AND dataset = ?"
        params = (dataset,)
    rows = node.db.query(sql + " ORDER BY created", params)
    if min_age > 0:
        rows = [r for r in rows if r["state"] == "started" or _age(r["created"]) >= min_age]
    report = RecoveryReport()
    if not rows:
        return report
    url = broker_url(node.home)
    client = broker_redis(url)
    try:
        queues = sorted({queue_name(node.home, r["dataset"]) for r in rows})
        waiting = queued_run_ids(client, queues)
        lost: list[str] = []
        for r in rows:
            run_id = r["run_id"]
            if r["state"] == "started":
                attempts, owner = run_owner(node, run_id)
                if owner is not None and is_alive(node.db, owner):
                    if _rescue_stalled_fan_out(node, run_id, signer=signer, interval=min_age):
                        report.rescued.append(run_id)
                    else:
                        report.in_flight.append(run_id)
                    continue
                if run_id not in waiting and attempts >= MAX_ATTEMPTS:
                    fail_run(
                        node,
                        get_run(node, run_id),
                        InternalError(
                            f"run {run_id} lost its worker in each of {attempts} attempts; "
                            "it is failed rather than retried again (see the worker logs)"
                        ),
                        signer=signer,
                    )
                    report.failed.append(run_id)
                    continue
            if run_id in waiting:
                report.queued.append(run_id)
                continue
            lost.append(run_id)
        if lost:
            # Delivered copies held by dead workers would come back after the
            # visibility timeout; drop them now (a copy that does come back is
            # dropped by the pipeline anyway: the run has an outcome by then).
            stale = _unacked_tags(client, set(lost))
            for tags in stale.values():
                client.hdel(_UNACKED, *tags)
                client.zrem(_UNACKED_INDEX, *tags)
            dispatch_many(node, lost)
            report.redispatched.extend(lost)
    except (redis.RedisError, OSError) as exc:
        raise InternalError(
            f"cannot reach the broker to recover runs ({type(exc).__name__}); "
            "start it and run opal worker recover again"
        ) from None
    if report.redispatched or report.failed or report.rescued:
        log.warning(
            "recovery: %d run(s) re-dispatched, %d failed, %d fan-out(s) rescued, %d in flight, %d queued",
            len(report.redispatched), len(report.failed), len(report.rescued), len(report.in_flight),
            len(report.queued),
        )
    return report


_RESCUES = (
    """CREATE TABLE IF NOT EXISTS run_rescues (
        run_id     TEXT PRIMARY KEY,
        rescues    INTEGER NOT NULL,
        sent       REAL NOT NULL
    )""",
)
_rescues_ready: weakref.WeakSet[Database] = weakref.WeakSet()


def _rescue_stalled_fan_out(node: Node, run_id: str, *, signer: Signer, interval: float) -> bool:
    """Send a stalled fan-out's missing partitions and its combining task again (module
    docstring); True if it did (or gave up on the missing partitions and combined)."""
    from opal.worker.celery import run_timeout
    from opal.worker.fanout import fail_missing, missing_parts, resend

    row = node.db.one("SELECT dataset, updated FROM runs WHERE run_id = ?", (run_id,))
    if row is None:
        return False
    try:
        parts = len(catalog.get(node, row["dataset"]).partition_files())
    except OpalError:
        return False
    if parts <= 1:
        return False
    ensure_tables(node.db, _RESCUES, _rescues_ready)
    last = _timestamp(row["updated"])
    progress = node.db.one("SELECT MAX(created) AS t FROM run_partials WHERE run_id = ?", (run_id,))
    if progress is not None and progress["t"]:
        last = max(last, _timestamp(progress["t"]))
    rescue = node.db.one("SELECT rescues, sent FROM run_rescues WHERE run_id = ?", (run_id,))
    if rescue is not None:
        last = max(last, float(rescue["sent"]))
    if time.time() - last < run_timeout() + 2 * max(interval, 1.0):
        return False  # a partition may still be running
    done = int(rescue["rescues"]) if rescue is not None else 0
    with node.db.transaction() as tx:
        tx.execute(
            "INSERT OR REPLACE INTO run_rescues(run_id, rescues, sent) VALUES (?,?,?)", (run_id, done + 1, time.time())
        )
    if done >= MAX_ATTEMPTS:
        log.warning("run %s: partitions still missing after %d rescues; they contribute nothing", run_id, done)
        fail_missing(node, run_id, signer=signer)
        return True
    missing = missing_parts(node, run_id, parts)
    resend(node, run_id, row["dataset"], missing, tag=f"r{done + 1}")
    log.warning("run %s: fan-out stalled; %d partition(s) and the combine sent again", run_id, len(missing))
    return True


def _timestamp(value: Any) -> float:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _age(created: str) -> float:
    return time.time() - datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()


def start_sweeper(node: Node, *, signer: Signer, dataset: str, holder: str, interval: float) -> threading.Event:
    """Recover ``dataset``'s runs every ``interval`` seconds from a daemon thread.

    Of the workers serving the dataset (on any node), the one holding the
    lease sweeps; the lease outlives two sweeps, so a dead holder is replaced.
    Set the returned event to stop.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                if take_lease(node.db, f"recovery:{dataset}", holder, seconds=2.5 * interval):
                    recover(node, signer=signer, dataset=dataset, min_age=interval)
            except OpalError as exc:
                log.warning("recovery sweep skipped: %s", exc.message)
            except Exception as exc:  # noqa: BLE001 - the sweep must outlive any one failure
                log.warning("recovery sweep failed (%s); retrying in %g s", type(exc).__name__, interval)

    threading.Thread(target=loop, name="opal-recovery", daemon=True).start()
    return stop
