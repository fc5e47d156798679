"""The node's database: SQLite by default, PostgreSQL when ``OPAL_DB_URL`` is set.

One connection per process and thread. Every write goes through
``Database.transaction()``, which on SQLite is ``BEGIN IMMEDIATE`` (the
write lock is taken up front, so two writers never interleave a
read-then-write) on a WAL database with ``synchronous=FULL`` (a commit is on
disk before ``transaction()`` returns).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opal.errors import InternalError

__all__ = ["Database", "SCHEMA"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    idx        INTEGER PRIMARY KEY,
    entry      BLOB    NOT NULL,
    leaf_hash  BLOB    NOT NULL,
    type       TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    time       TEXT    NOT NULL,
    subject    TEXT
);
CREATE INDEX IF NOT EXISTS ledger_type ON ledger(type);
CREATE INDEX IF NOT EXISTS ledger_subject ON ledger(subject);
CREATE TABLE IF NOT EXISTS checkpoints (
    size       INTEGER NOT NULL,
    root       TEXT    NOT NULL,
    origin     TEXT    NOT NULL,
    signer     TEXT    NOT NULL,
    signature  TEXT    NOT NULL,
    time       TEXT    NOT NULL,
    PRIMARY KEY (size, signer)
);
CREATE TABLE IF NOT EXISTS keys (
    name       TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    role       TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created    TEXT NOT NULL,
    revoked_at TEXT,
    revoke_reason TEXT
);
CREATE TABLE IF NOT EXISTS bundles (
    digest     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    author     TEXT NOT NULL,
    signature  TEXT NOT NULL,
    submitted  TEXT NOT NULL,
    revoked_at TEXT,
    revoke_reason TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    digest     TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    statement  TEXT NOT NULL,
    signature  TEXT NOT NULL,
    verdict    TEXT NOT NULL,
    time       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    name       TEXT PRIMARY KEY,
    path       TEXT NOT NULL,
    schema     TEXT NOT NULL,
    rows       INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    policy     TEXT NOT NULL,
    registered TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS budget (
    dataset    TEXT PRIMARY KEY,
    total      REAL NOT NULL,
    spent      REAL NOT NULL DEFAULT 0,
    reserved   REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS budget_events (
    run_id     TEXT NOT NULL,
    dataset    TEXT NOT NULL,
    epsilon    REAL NOT NULL,
    state      TEXT NOT NULL,
    actor      TEXT NOT NULL,
    time       TEXT NOT NULL,
    PRIMARY KEY (run_id, state)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    algorithm  TEXT NOT NULL,
    digest     TEXT NOT NULL,
    dataset    TEXT NOT NULL,
    params     TEXT NOT NULL,
    epsilon    REAL NOT NULL,
    requester  TEXT NOT NULL,
    state      TEXT NOT NULL,
    cache_key  TEXT NOT NULL,
    created    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    result     TEXT,
    result_digest TEXT,
    error      TEXT,
    request_index INTEGER
);
CREATE INDEX IF NOT EXISTS runs_cache ON runs(cache_key, state);
"""


class Database:
    """A thin, explicit wrapper: ``query``/``one`` to read, ``transaction`` to write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._pid = os.getpid()
        with self.transaction() as tx:
            tx.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._pid != os.getpid():
            self._pid = os.getpid()
            try:
                conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            except sqlite3.Error as exc:
                raise InternalError(f"cannot open database {self.path}: {exc}") from None
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        conn = self._conn()
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, params))
        finally:
            conn.row_factory = None

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
