"""The SQLite-to-PostgreSQL translation of upserts (opal/db.py)."""

from __future__ import annotations

import weakref

import pytest

from opal.db import Database, ensure_tables, translate
from opal.errors import InternalError


def test_upsert_into_a_schema_table_updates_every_non_key_column() -> None:
    sql = translate("INSERT OR REPLACE INTO budget_events(run_id, dataset, epsilon, state, actor, time) VALUES (?,?,?,?,?,?)")
    assert sql.endswith(
        "ON CONFLICT (run_id, state) DO UPDATE SET dataset = EXCLUDED.dataset, epsilon = EXCLUDED.epsilon, "
        "actor = EXCLUDED.actor, time = EXCLUDED.time"
    )


def test_upsert_into_a_table_of_unknown_key_fails_loudly() -> None:
    with pytest.raises(InternalError, match="primary key is unknown"):
        translate("INSERT OR REPLACE INTO nowhere(a, b) VALUES (?, ?)")


def test_tables_made_by_ensure_tables_upsert_on_postgresql(pg_url: str) -> None:
    db = Database(url=pg_url)
    ensure_tables(db, ("CREATE TABLE IF NOT EXISTS widgets (name TEXT PRIMARY KEY, size INTEGER NOT NULL)",),
                  weakref.WeakSet())
    for size in (1, 2):
        with db.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO widgets(name, size) VALUES (?, ?)", ("w", size))
    assert [tuple(r) for r in db.query("SELECT name, size FROM widgets")] == [("w", 2)]
    db.close()
