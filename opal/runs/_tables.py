"""Tables the run machinery adds to the node database (created on first use).

``run_attempts``: how many times a run was started and by which worker
process (the retry cap and the owner recovery asks about). ``workers``: the
worker processes that execute runs, with a heartbeat, so recovery can tell a
run in flight from a run whose worker died. ``leases``: which worker holds a
node-wide chore (the periodic recovery sweep of a dataset) until when, so two
nodes sharing a database do not both do it.
"""

from __future__ import annotations

import weakref

from opal.db import Database, ensure_tables

__all__ = ["ensure_run_tables"]

_TABLES = (
    """CREATE TABLE IF NOT EXISTS run_attempts (
        run_id     TEXT PRIMARY KEY,
        attempts   INTEGER NOT NULL,
        worker     TEXT NOT NULL,
        claimed    TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS workers (
        worker_id  TEXT PRIMARY KEY,
        host       TEXT NOT NULL,
        pid        INTEGER NOT NULL,
        dataset    TEXT,
        started    TEXT NOT NULL,
        heartbeat  DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS leases (
        name       TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        until      DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS runs_state ON runs(state)",
)

_done: weakref.WeakSet[Database] = weakref.WeakSet()


def ensure_run_tables(db: Database) -> None:
    ensure_tables(db, _TABLES, _done)
