"""Fixtures for ledger tests: real SQLite files, a real PostgreSQL database per test."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opal.db import Database
from opal.ledger import Ledger
from opal.trust.keyring import Signer
from opal.trust.keys import KeyInfo, generate_private_key, key_id_of, public_raw, utcnow


def make_signer(name: str, role: str) -> Signer:
    private = generate_private_key()
    raw = public_raw(private)
    info = KeyInfo(
        name=name, key_id=key_id_of(raw), role=role, public_key=raw.hex(), created=utcnow()
    )
    return Signer(info, private)


def add_key(ledger: Ledger, signer: Signer, by: Signer | None = None) -> None:
    body = {
        "name": signer.name,
        "role": signer.role,
        "key_id": signer.key_id,
        "public_key": signer.info.public_key,
    }
    ledger.append(type="key_added", body=body, signer=by or signer, subject=signer.key_id)


def raw_conn(ledger: Ledger) -> sqlite3.Connection:
    """A plain connection to the ledger's SQLite file with the append-only triggers dropped."""
    ledger.db.close()
    conn = sqlite3.connect(str(ledger.db.path), isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_update")
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_delete")
    return conn

def notes(ledger: Ledger, signer: Signer, n: int) -> None:
    """Append ``n`` note entries signed by ``signer``."""
    ledger.append_many([{"type": "note", "body": {"n": i}} for i in range(n)], signer=signer)


def flip_signature(conn: sqlite3.Connection, idx: int) -> None:
    """Change one base64 character of entry ``idx``'s signature (still valid base64, no longer valid)."""
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = ?", (idx,)).fetchone()
    pos = raw.index(b'"signature":"') + 14
    swapped = b"B" if raw[pos : pos + 1] == b"A" else b"A"
    conn.execute("UPDATE ledger SET entry = ? WHERE idx = ?", (raw[:pos] + swapped + raw[pos + 1 :], idx))


def reopen(ledger: Ledger) -> Ledger:
    """A fresh Ledger on the same SQLite file (after raw_conn closed the first one's connection)."""
    return Ledger(Database(ledger.db.path, url=""), origin="opal/test")



class Actors:
    def __init__(self) -> None:
        self.op = make_signer("op", "operator")
        self.board = make_signer("board1", "board")
        self.reviewer = make_signer("rev1", "reviewer")
        self.stat = make_signer("stat1", "statistician")

    def register(self, ledger: Ledger) -> None:
        for s in (self.op, self.board, self.reviewer, self.stat):
            add_key(ledger, s)


def populate(ledger: Ledger, actors: Actors, *, runs: int = 2) -> dict[str, Any]:
    """Keys, a bundle submitted and approved, ``runs`` released runs; returns facts for assertions."""
    actors.register(ledger)
    digest = "ab" * 32
    ledger.append(
        type="bundle_submitted",
        body={"digest": digest, "name": "pop", "version": "1.0.0"},
        signer=actors.stat,
        subject="pop",
    )
    ledger.append(
        type="bundle_approved",
        body={"digest": digest, "name": "pop", "version": "1.0.0"},
        signer=actors.reviewer,
        subject="pop",
    )
    finished = []
    for i in range(runs):
        run_id = f"run{i:04d}"
        ledger.append(
            type="run_requested",
            body={"run_id": run_id, "algorithm": "pop@1.0.0", "digest": digest},
            signer=actors.stat,
            subject="pop",
        )
        ledger.append(
            type="run_started",
            body={"run_id": run_id, "digest": digest, "epsilon_reserved": 0.5},
            signer=actors.op,
            subject="pop",
        )
        e = ledger.append(
            type="run_finished",
            body={
                "run_id": run_id,
                "outcome": "released",
                "result_digest": f"{i:064x}",
                "epsilon_spent": 0.5,
            },
            signer=actors.op,
            subject="pop",
        )
        finished.append(e)
    return {"digest": digest, "finished": finished}


@pytest.fixture
def actors() -> Actors:
    return Actors()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(tmp_path / "opal.db", url="")
    yield db
    db.close()


@pytest.fixture
def ledger(sqlite_db: Database) -> Ledger:
    return Ledger(sqlite_db, origin="opal/test")


# pg_url (a fresh PostgreSQL database per test) is in tests/conftest.py.
