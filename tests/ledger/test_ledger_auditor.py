"""The auditor remembers: `opal ledger verify` keeps its own state (outside OPAL_HOME) and every
later verify must prove the ledger extends it. Each test is an attack by the operator, who holds
the node, its database and its keys, that an audit without memory passed (exit 0)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from opal.cli import cli
from opal.ledger.records import Cosignature
from opal.node import Node


def opal(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("OPAL_DB_URL", raising=False)
    h = tmp_path / "node"
    for args in (
        ("keys", "new", "op", "--role", "operator"),
        ("keys", "new", "board1", "--role", "board"),
        ("keys", "new", "rev1", "--role", "reviewer"),
        ("keys", "new", "wit1", "--role", "witness"),
        ("trust", "init", "--board", "board1", "--approvals", "1"),
    ):
        code, out, err = opal(h, *args)
        assert code == 0, out + err
    notes(h, 20)
    return h


def notes(home: Path, n: int, *, tag: str = "") -> None:
    node = Node.open(home)
    signer = node.keyring.signer("op")
    node.ledger.append_many([{"type": "note", "body": {"n": i, "tag": tag}} for i in range(n)], signer=signer)
    node.db.close()


def raw(home: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(home / "opal.db"), isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_update")
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_delete")
    return conn


def save_copy(home: Path, dest: Path) -> None:
    """An operator's backup of the node database (SQLite's backup API: WAL included)."""
    src = sqlite3.connect(str(home / "opal.db"))
    out = sqlite3.connect(str(dest))
    src.backup(out)
    out.close()
    src.close()


def restore_copy(home: Path, src: Path) -> None:
    """The operator restores the backup over the live database."""
    old = sqlite3.connect(str(src))
    live = sqlite3.connect(str(home / "opal.db"))
    old.backup(live)
    live.close()
    old.close()


def verify(home: Path, *args: str) -> tuple[int, str]:
    code, out, err = opal(home, "ledger", "verify", *args)
    return code, out + err


def test_state_lives_outside_opal_home_and_inside_is_refused(home: Path, auditor_config: Path) -> None:
    code, out = verify(home, "--json")
    assert code == 0
    state = Path(json.loads(out)["state"]["path"])
    assert state.is_file() and auditor_config in state.parents and home not in state.parents
    code, out = verify(home, "--state", str(home / "audit.json"))
    assert code == 2 and "inside OPAL_HOME" in out


def test_later_verify_checks_only_the_new_entries(home: Path) -> None:
    assert verify(home)[0] == 0
    notes(home, 7)
    code, out = verify(home, "--json")
    report = json.loads(out)
    assert code == 0 and report["state"]["from_size"] == 21 and report["signatures_checked"] == 7


def test_rollback_to_an_older_copy_of_the_database(home: Path, tmp_path: Path) -> None:
    save_copy(home, tmp_path / "old.db")
    notes(home, 5)
    assert verify(home)[0] == 0  # the auditor saw 26 entries
    restore_copy(home, tmp_path / "old.db")
    assert opal(home, "ledger", "verify", "--state", str(tmp_path / "fresh.json"))[0] == 0  # no memory: passes
    code, out = verify(home)
    assert code == 7 and "fewer than the checkpoint of size 26" in out and "rolled back" in out


def test_tail_truncated_with_its_checkpoint_rows_dropped(home: Path, tmp_path: Path) -> None:
    assert opal(home, "ledger", "checkpoint")[0] == 0
    assert verify(home)[0] == 0
    conn = raw(home)
    conn.execute("DELETE FROM ledger WHERE idx >= 15")
    conn.execute("DELETE FROM checkpoints")
    conn.close()
    assert opal(home, "ledger", "verify", "--state", str(tmp_path / "fresh.json"))[0] == 0
    code, out = verify(home)
    assert code == 7 and "fewer than the checkpoint of size 21" in out


def full_rewrite(home: Path) -> None:
    """What the operator alone can do: change one of his own entries, re-sign every later entry of his
    with his key, recompute every leaf, sign a new checkpoint and forge a cosignature with his key."""
    node = Node.open(home)
    op = node.keyring.signer("op")
    conn = raw(home)
    conn.execute("DELETE FROM checkpoints")
    conn.execute("DELETE FROM cosignatures")
    rows = conn.execute("SELECT idx, entry FROM ledger WHERE idx >= 10 ORDER BY idx").fetchall()
    from opal.canonical import canonical_json
    from opal.ledger import merkle
    from opal.ledger.records import ENTRY_DOMAIN, envelope

    for idx, stored in rows:
        entry = json.loads(stored)["entry"]
        if idx == 10:
            entry["body"]["tag"] = "rewritten"
        signed = canonical_json(entry)
        new = envelope(signed, op.sign(ENTRY_DOMAIN, signed))
        conn.execute("UPDATE ledger SET entry = ?, leaf_hash = ? WHERE idx = ?", (new, merkle.leaf_hash(new), idx))
    conn.close()
    node = Node.open(home)
    cp = node.ledger.checkpoint(node.keyring.signer("op"))
    forged = Cosignature(origin=cp.origin, size=cp.size, root=cp.root, witness=op.key_id, signature="",
                         time="2026-12-01T00:00:00Z")
    node.ledger.add_cosignature(dataclasses.replace(forged, signature=op.sign_note(forged.message())))
    node.db.close()


def test_full_rewrite_with_the_operator_key_online(home: Path, tmp_path: Path) -> None:
    assert verify(home)[0] == 0
    full_rewrite(home)
    code, out = verify(home)
    assert code == 7 and "do not match the checkpoint of size 21" in out and "rewritten" in out
    # without memory, the forged cosignature is still named: the operator is no witness of the policy
    code, out = opal(home, "ledger", "verify", "--state", str(tmp_path / "fresh.json"))[0:2]
    assert code == 7


def test_full_rewrite_is_named_while_workers_check_the_new_entries(home: Path) -> None:
    """With enough new entries the audit starts its pool first and proves the held tree meanwhile:
    the rewrite is still what it names, not some later entry."""
    assert verify(home)[0] == 0
    full_rewrite(home)
    notes(home, 6000)  # above POOL_MIN_ENTRIES: checked by worker processes
    code, out = verify(home)
    assert code == 7 and "do not match the checkpoint of size 21" in out and "rewritten" in out


def test_a_leaf_hash_cell_of_another_length_is_a_rewrite_not_bad_input(home: Path) -> None:
    assert verify(home)[0] == 0
    conn = raw(home)
    conn.execute("UPDATE ledger SET leaf_hash = substr(leaf_hash, 1, 31) WHERE idx = 4")
    conn.close()
    code, out = verify(home)
    assert code == 7 and "do not match the checkpoint of size 21" in out


def test_full_rewrite_offline_with_the_policy_and_a_held_state(home: Path, tmp_path: Path) -> None:
    policy = home / "governance" / "trust_policy.json"
    assert opal(home, "ledger", "checkpoint")[0] == 0
    assert opal(home, "ledger", "cosign", "--key", "wit1")[0] == 0
    first = tmp_path / "first.jsonl"
    assert opal(home, "ledger", "export", "--out", str(first))[0] == 0
    state = tmp_path / "board-state.json"
    elsewhere = tmp_path / "nowhere"
    code, out, err = opal(elsewhere, "ledger", "verify", "--file", str(first), "--policy", str(policy),
                          "--state", str(state))
    assert code == 0, err
    full_rewrite(home)
    second = tmp_path / "second.jsonl"
    assert opal(home, "ledger", "export", "--out", str(second))[0] == 0
    # the witness threshold comes from the board's policy: the operator's own cosignature is not a witness's
    code, _, err = opal(elsewhere, "ledger", "verify", "--file", str(second), "--policy", str(policy),
                        "--state", str(tmp_path / "fresh.json"))
    assert code == 7 and "0 valid witness cosignature(s), your trust policy v1 needs 1" in err
    code, _, err = opal(elsewhere, "ledger", "verify", "--file", str(second), "--policy", str(policy),
                        "--state", str(state))
    assert code == 7 and "does not extend the checkpoint of size 21" in err


def test_a_fork_is_refused_by_the_witness_even_after_its_state_is_deleted_from_opal_home(
    home: Path, tmp_path: Path
) -> None:
    save_copy(home, tmp_path / "backup.db")
    notes(home, 2)
    assert opal(home, "ledger", "checkpoint")[0] == 0
    assert opal(home, "ledger", "cosign", "--key", "wit1")[0] == 0
    shutil.rmtree(home / "witness", ignore_errors=True)  # where the witness's memory used to be
    restore_copy(home, tmp_path / "backup.db")
    notes(home, 3, tag="fork")
    assert opal(home, "ledger", "checkpoint")[0] == 0
    code, _, err = opal(home, "ledger", "cosign", "--key", "wit1")
    assert code == 7 and ("does not extend" in err or "rolled back" in err)
