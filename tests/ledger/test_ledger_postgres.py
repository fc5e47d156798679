"""The PostgreSQL backend: existing callers work unchanged, tampering is still detected."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from ledger_fixtures import Actors, populate

from opal.db import Database, translate
from opal.errors import LedgerCorrupt
from opal.home import Home
from opal.ledger import Ledger
from opal.trust.keyring import Keyring


def test_sqlite_dialect_is_translated() -> None:
    assert (
        translate("SELECT a FROM t WHERE b = ? AND c LIKE 'x%?'")
        == "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%?'"
    )
    assert translate("INSERT OR IGNORE INTO keys(name, key_id) VALUES (?,?)").endswith(
        "ON CONFLICT DO NOTHING"
    )
    assert translate("INSERT OR REPLACE INTO budget_owners(dataset, pool) VALUES (?,?)").endswith(
        "ON CONFLICT (dataset) DO UPDATE SET pool = EXCLUDED.pool"
    )


def test_ledger_on_postgres_verifies_and_proves(pg_url: str, actors: Actors) -> None:
    ledger = Ledger(Database(None, url=pg_url), origin="opal/pg")
    facts = populate(ledger, actors)
    cp = ledger.checkpoint(actors.op)
    assert ledger.checkpoint(actors.op).root == cp.root  # same statement again: stored once
    report = ledger.verify()
    assert (report.size, report.checkpoints, report.runs) == (12, 1, 2)
    assert ledger.entries(type="run_finished", subject="pop")[1].index == facts["finished"][1].index
    assert ledger.index_of(facts["finished"][0].leaf_hash.hex()) == facts["finished"][0].index


def test_tampering_on_postgres_is_detected_with_the_trigger_dropped(
    pg_url: str, actors: Actors
) -> None:
    ledger = Ledger(Database(None, url=pg_url), origin="opal/pg")
    populate(ledger, actors)
    ledger.checkpoint(actors.op)
    with pytest.raises(psycopg.Error, match="append-only"), ledger.db.transaction() as tx:
        tx.execute("DELETE FROM ledger WHERE idx = 3")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER ledger_no_update ON ledger")
        (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = 8").fetchone()
        conn.execute(
            "UPDATE ledger SET entry = %s WHERE idx = 8",
            (bytes(raw).replace(b"released", b"refused!"),),
        )
    with pytest.raises(
        LedgerCorrupt, match=r"^ledger entry 8 \(run_finished\): signature does not verify"
    ):
        ledger.verify()


def test_existing_callers_work_unchanged_on_postgres(pg_url: str, tmp_path: Path) -> None:
    db = Database(None, url=pg_url)
    ledger = Ledger(db, origin="opal/pg")
    keyring = Keyring(Home(tmp_path / "home").ensure(), db)
    keyring.new("op", "operator", ledger)
    keyring.new("board1", "board", ledger)
    from ledger_fixtures import install_board

    install_board(ledger, keyring.signer("board1"), [keyring.signer("op")])
    info = keyring.get("op")
    assert dict(db.one("SELECT * FROM keys WHERE name = ?", ("op",)))["key_id"] == info.key_id
    keyring.revoke("board1", "left", by=keyring.signer("op"), ledger=ledger)
    assert keyring.get("board1").revoked
    from opal.release import budget

    with db.transaction() as tx:
        budget.open_pool(tx, dataset="cdr", fingerprint="f" * 64, total_epsilon=10.0)
    with db.transaction() as tx:
        budget.reserve(tx, dataset="cdr", run_id="r1", epsilon=1.5, actor=info.key_id)
    with db.transaction() as tx:
        assert budget.commit(tx, run_id="r1", actor=info.key_id) == 1.5
    row = db.one("SELECT total, spent, reserved FROM budget WHERE pool = ?", ("f" * 64,))
    total, spent, reserved = row
    assert (total, spent, reserved, row["spent"]) == (10_000_000, 1_500_000, 0, 1_500_000)  # micro-ε
    assert ledger.verify().size == 2


def test_opal_db_url_selects_postgres(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPAL_DB_URL", pg_url)
    db = Database(tmp_path / "unused.db")
    assert db.dialect == "postgresql" and not (tmp_path / "unused.db").exists()
    assert "postgresql://" in db.where


def test_incremental_audit_from_a_held_state_on_postgres(pg_url: str, tmp_path: Path, actors: Actors) -> None:
    ledger = Ledger(Database(None, url=pg_url), origin="opal/pg")
    populate(ledger, actors)
    state = tmp_path / "audit.json"
    assert ledger.verify(state=state).size == 12
    ledger.append(type="note", body={"n": 1}, signer=actors.op)
    report = ledger.verify(state=state)
    assert report.size == 13 and report.signatures == 1 and report.state is not None
    assert report.state["from_size"] == 12
