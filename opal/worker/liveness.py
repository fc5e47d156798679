"""Which worker process holds a run, and whether it is still alive.

Every process that executes runs registers itself in the ``workers`` table
and refreshes a heartbeat from a background thread. A run's owner is alive
while its heartbeat is fresh and, on this host, while its process exists (so
a worker killed with ``kill -9`` is known dead at once, not after the lease).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opal.runs._tables import ensure_run_tables
from opal.trust.keys import utcnow

log = logging.getLogger("opal.worker")

if TYPE_CHECKING:
    from opal.db import Database
    from opal.node import Node

__all__ = [
    "HEARTBEAT_SECONDS", "HOST", "LEASE_SECONDS", "is_alive", "local_worker", "serving", "take_lease", "worker_row",
]

HEARTBEAT_SECONDS = 5.0
# A heartbeat older than this means the worker is gone (or cut off): its runs
# may be taken over. Several heartbeats, so a busy machine does not trip it.
LEASE_SECONDS = 30.0
HOST = socket.gethostname()

_lock = threading.Lock()


@dataclass
class _Me:
    worker_id: str
    pid: int
    db: Database
    stop: threading.Event


_me: _Me | None = None


def local_worker(node: Node, *, dataset: str | None = None) -> str:
    """This process's worker id, registered (once per process) with a heartbeat."""
    global _me
    pid = os.getpid()
    with _lock:
        if _me is not None and _me.pid == pid and _me.db is node.db:
            return _me.worker_id
        ensure_run_tables(node.db)
        worker_id = f"{HOST}:{pid}:{secrets.token_hex(3)}"
        with node.db.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO workers(worker_id, host, pid, dataset, started, heartbeat) "
                "VALUES (?,?,?,?,?,?)",
                (worker_id, HOST, pid, dataset, utcnow(), time.time()),
            )
        me = _Me(worker_id=worker_id, pid=pid, db=node.db, stop=threading.Event())
        threading.Thread(target=_beat, args=(me,), name="opal-heartbeat", daemon=True).start()
        _me = me
        return worker_id


def _beat(me: _Me) -> None:
    while not me.stop.wait(HEARTBEAT_SECONDS):
        if os.getpid() != me.pid:
            return
        try:
            with me.db.transaction() as tx:
                tx.execute("UPDATE workers SET heartbeat = ? WHERE worker_id = ?", (time.time(), me.worker_id))
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the lease is several beats long
            log.debug("heartbeat missed: %s", type(exc).__name__)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody reaped yet is a zombie: dead all the same
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def worker_row(db: Database, worker_id: str) -> Any | None:
    ensure_run_tables(db)
    return db.one("SELECT * FROM workers WHERE worker_id = ?", (worker_id,))


def is_alive(db: Database, worker_id: str | None, *, now: float | None = None) -> bool:
    if not worker_id:
        return False
    row = worker_row(db, worker_id)
    if row is None:
        return False
    now = time.time() if now is None else now
    if now - float(row["heartbeat"]) > LEASE_SECONDS:
        return False
    if row["host"] == HOST:
        return _process_exists(int(row["pid"]))
    return True


def serving(db: Database, dataset: str, *, now: float | None = None) -> list[str]:
    """The live worker processes registered for ``dataset``."""
    ensure_run_tables(db)
    now = time.time() if now is None else now
    rows = db.query(
        "SELECT worker_id FROM workers WHERE dataset = ? AND heartbeat >= ?", (dataset, now - LEASE_SECONDS)
    )
    return [r["worker_id"] for r in rows if is_alive(db, r["worker_id"], now=now)]


def take_lease(db: Database, name: str, holder: str, *, seconds: float, now: float | None = None) -> bool:
    """Hold the chore ``name`` for ``seconds`` unless another holder's lease is still running.

    The check and the write happen under the database's write lock, so of two
    nodes asking at once exactly one gets it.
    """
    ensure_run_tables(db)
    now = time.time() if now is None else now
    with db.transaction() as tx:
        row = tx.execute("SELECT holder, until FROM leases WHERE name = ?", (name,)).fetchone()
        if row is not None and row[0] != holder and float(row[1]) > now:
            return False
        tx.execute("INSERT OR REPLACE INTO leases(name, holder, until) VALUES (?,?,?)", (name, holder, now + seconds))
    return True
