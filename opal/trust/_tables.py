"""Tables the trust package adds to the node database (created on first use)."""

from __future__ import annotations

import weakref

from opal.db import Database, ensure_tables

__all__ = ["ensure_trust_tables"]

_TABLES = (
    """CREATE TABLE IF NOT EXISTS trust_policies (
        version    INTEGER PRIMARY KEY,
        digest     TEXT NOT NULL,
        document   TEXT NOT NULL,
        installed  TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS bundle_pins (
        name       TEXT PRIMARY KEY,
        version    TEXT NOT NULL,
        statement  TEXT NOT NULL,
        key_id     TEXT NOT NULL,
        signature  TEXT NOT NULL,
        time       TEXT NOT NULL
    )""",
)

_done: weakref.WeakSet[Database] = weakref.WeakSet()


def ensure_trust_tables(db: Database) -> None:
    ensure_tables(db, _TABLES, _done)
