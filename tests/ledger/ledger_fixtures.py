"""Fixtures for ledger tests: real SQLite files, a real PostgreSQL database per test."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opal.canonical import canonical_json, sha256_hex
from opal.db import Database
from opal.ledger import Ledger
from opal.trust.keyring import Signer
from opal.trust.keys import KeyInfo, generate_private_key, key_id_of, public_raw, utcnow
from opal.trust.policy import POLICY_DOMAIN, POLICY_TYPE


def make_signer(name: str, role: str, *, seed: bytes | None = None) -> Signer:
    private = generate_private_key() if seed is None else Ed25519PrivateKey.from_private_bytes(seed)
    raw = public_raw(private)
    info = KeyInfo(
        name=name, key_id=key_id_of(raw), role=role, public_key=raw.hex(), created=utcnow()
    )
    return Signer(info, private)


def policy_envelope(
    board: list[Signer],
    members: list[Signer],
    *,
    version: int = 1,
    approvals: int = 1,
    witnesses: int | None = None,
    signers: list[Signer] | None = None,
) -> dict[str, Any]:
    """A trust policy naming ``board`` and each of ``members`` in its role, signed by ``signers`` (default: board)."""
    everyone = {s.key_id: s for s in [*board, *members]}
    roles: dict[str, dict[str, Any]] = {r: {"keyids": []} for r in ("board", "reviewer", "statistician", "operator", "witness")}
    for s in board:
        roles["board"]["keyids"].append(s.key_id)
    for s in members:
        if s.key_id not in roles[s.role]["keyids"]:
            roles[s.role]["keyids"].append(s.key_id)
    if not roles["reviewer"]["keyids"]:
        roles["reviewer"]["keyids"].append(board[0].key_id)
    for spec in roles.values():
        spec["keyids"].sort()
    roles["board"]["threshold"] = len(board) // 2 + 1
    roles["reviewer"]["threshold"] = approvals
    n_witness = len(roles["witness"]["keyids"])
    roles["witness"]["threshold"] = n_witness if witnesses is None else witnesses
    signed = {
        "_type": POLICY_TYPE,
        "version": version,
        "created": utcnow(),
        "keys": {k: {"name": s.name, "public_key": s.info.public_key} for k, s in everyone.items()},
        "roles": roles,
        "approval_lifetime_days": 90,
        "author_may_approve": False,
    }
    message = canonical_json(signed)
    sigs = [{"keyid": s.key_id, "sig": s.sign(POLICY_DOMAIN, message)} for s in (signers or board)]
    return {"signed": signed, "signatures": sigs}


def append_policy(ledger: Ledger, envelope: dict[str, Any], *, by: Signer) -> None:
    version = envelope["signed"]["version"]
    body = {
        "version": version,
        "digest": sha256_hex(canonical_json(envelope["signed"])),
        "previous": version - 1,
        "policy": envelope,
    }
    ledger.append(type="trust_policy", body=body, signer=by, subject="trust_policy")


# The board of each test ledger (by database), so add_key works after reopen().
_BOARDS: dict[str, Signer] = {}


def _ledger_id(ledger: Ledger) -> str:
    return str(getattr(ledger.db, "url", "") or "") + str(getattr(ledger.db, "path", ""))


def install_board(ledger: Ledger, board: Signer, members: list[Signer], **kw: Any) -> None:
    """Version 1 of the trust policy: ``board`` and ``members`` in their roles."""
    append_policy(ledger, policy_envelope([board], members, **kw), by=board)
    _BOARDS[_ledger_id(ledger)] = board


def test_board(ledger: Ledger) -> Signer:
    """This ledger's board key; installs a one-key board policy first if there is none yet."""
    board = _BOARDS.get(_ledger_id(ledger))
    if board is None or ledger.size() == 0:
        board = make_signer("testboard", "board")
        install_board(ledger, board, [])
    return board


test_board.__test__ = False  # type: ignore[attr-defined]


def add_key(ledger: Ledger, signer: Signer, by: Signer | None = None) -> None:
    """Grant ``signer`` its role: a key_added entry signed by the ledger's board (or ``by``)."""
    body = {
        "name": signer.name,
        "role": signer.role,
        "key_id": signer.key_id,
        "public_key": signer.info.public_key,
    }
    ledger.append(type="key_added", body=body, signer=by or test_board(ledger), subject=signer.key_id)


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

        self.witness = make_signer("wit1", "witness")

    def register(self, ledger: Ledger) -> None:
        """Four entries: trust policy v1 by ``board`` (board and witness), then the board grants
        the operator, reviewer and statistician their roles (board-signed key_added)."""
        install_board(ledger, self.board, [self.witness])
        for s in (self.op, self.reviewer, self.stat):
            add_key(ledger, s, by=self.board)


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
