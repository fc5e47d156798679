"""Every way to rewrite history is detected (library level; CLI exit codes in test_ledger_cli)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from ledger_fixtures import Actors, add_key, make_signer, populate, raw_conn

from opal.db import Database
from opal.errors import LedgerCorrupt
from opal.ledger import Ledger, merkle
from opal.ledger.export import check_proven_item
from opal.ledger.records import Checkpoint


def test_untampered_ledger_verifies(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    ledger.checkpoint(actors.op)
    report = ledger.verify()
    assert report.size == 12 and report.runs == 2 and report.checkpoints == 1


def test_append_only_triggers_refuse_update_and_delete(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors, runs=1)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), ledger.db.transaction() as tx:
        tx.execute("UPDATE ledger SET type = 'x' WHERE idx = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), ledger.db.transaction() as tx:
        tx.execute("DELETE FROM ledger WHERE idx = 1")


def test_flipped_byte_is_detected_with_triggers_dropped(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    conn = raw_conn(ledger)
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = 8").fetchone()
    pos = raw.index(b'"outcome":"released"') + 12
    flipped = raw[:pos] + bytes([raw[pos] ^ 0x01]) + raw[pos + 1 :]
    conn.execute("UPDATE ledger SET entry = ? WHERE idx = 8", (flipped,))
    with pytest.raises(
        LedgerCorrupt, match=r"^ledger entry 8 \(run_finished\): signature does not verify"
    ):
        ledger.verify()


def test_flipped_byte_in_signature_is_detected(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    conn = raw_conn(ledger)
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = 5").fetchone()
    pos = raw.index(b'"signature":"') + 14
    conn.execute(
        "UPDATE ledger SET entry = ? WHERE idx = 5",
        (
            raw[:pos] + b"A" + raw[pos + 1 :]
            if raw[pos : pos + 1] != b"A"
            else raw[:pos] + b"B" + raw[pos + 1 :],
        ),
    )
    with pytest.raises(LedgerCorrupt, match=r"^ledger entry 5\b"):
        ledger.verify()


def test_deleted_entry_is_detected(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    raw_conn(ledger).execute("DELETE FROM ledger WHERE idx = 6")
    with pytest.raises(LedgerCorrupt, match=r"ledger entry 6 is missing"):
        ledger.verify()


def test_truncated_tail_is_detected_against_a_held_checkpoint(
    ledger: Ledger, actors: Actors
) -> None:
    populate(ledger, actors)
    held = ledger.checkpoint(actors.op)
    conn = raw_conn(ledger)
    conn.execute("DELETE FROM ledger WHERE idx >= 9")
    conn.execute("DELETE FROM checkpoints")  # the attacker removes the stored evidence too
    ledger.verify()  # on its own the shorter ledger is self-consistent …
    with pytest.raises(LedgerCorrupt, match="truncated"):
        ledger.verify(against=held)  # … but not against what the board holds


def test_truncated_tail_is_detected_by_the_stored_checkpoint(
    ledger: Ledger, actors: Actors
) -> None:
    populate(ledger, actors)
    ledger.checkpoint(actors.op)
    raw_conn(ledger).execute("DELETE FROM ledger WHERE idx >= 9")
    with pytest.raises(LedgerCorrupt, match="truncated"):
        ledger.verify()


def test_reordered_entries_are_detected(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    conn = raw_conn(ledger)
    conn.execute("UPDATE ledger SET idx = -1 WHERE idx = 5")
    conn.execute("UPDATE ledger SET idx = 5 WHERE idx = 6")
    conn.execute("UPDATE ledger SET idx = 6 WHERE idx = -1")
    with pytest.raises(LedgerCorrupt, match=r"^ledger entry 5 claims index 6; entries were moved"):
        ledger.verify()


def test_duplicated_last_entry_is_detected(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    conn = raw_conn(ledger)
    row = conn.execute(
        "SELECT entry, leaf_hash, type, actor, time, subject FROM ledger WHERE idx = 11"
    ).fetchone()
    conn.execute(
        "INSERT INTO ledger(idx, entry, leaf_hash, type, actor, time, subject) VALUES (12,?,?,?,?,?,?)",
        row,
    )
    with pytest.raises(LedgerCorrupt, match=r"^ledger entry 12 claims index 11"):
        ledger.verify()


def test_restored_backup_with_different_entries_is_a_fork(tmp_path: Path, actors: Actors) -> None:
    db_path = tmp_path / "opal.db"
    ledger = Ledger(Database(db_path, url=""), origin="opal/test")
    populate(ledger, actors)
    ledger.checkpoint(actors.op)
    ledger.db.close()
    shutil.copy(db_path, tmp_path / "backup.db")
    ledger = Ledger(Database(db_path, url=""), origin="opal/test")
    ledger.append(type="note", body={"n": 1}, signer=actors.op)
    held = ledger.checkpoint(actors.op)  # the board keeps this one
    ledger.db.close()
    shutil.copy(tmp_path / "backup.db", db_path)
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    forked = Ledger(Database(db_path, url=""), origin="opal/test")
    forked.append(type="note", body={"n": 2}, signer=actors.op)
    forked.checkpoint(actors.op)  # the operator's checkpoint of the fork is self-consistent
    forked.verify()
    with pytest.raises(LedgerCorrupt, match="does not extend the held checkpoint"):
        forked.verify(against=held)


def test_two_checkpoints_of_one_size_with_different_roots_are_equivocation(
    ledger: Ledger, actors: Actors
) -> None:
    populate(ledger, actors)
    cp = ledger.checkpoint(actors.op)
    other_root = "11" * 32
    other = Checkpoint(
        origin=cp.origin,
        size=cp.size,
        root=other_root,
        signer=cp.signer,
        signature=actors.op.sign_note(
            Checkpoint(
                origin=cp.origin, size=cp.size, root=other_root, signer="", signature="", time=""
            ).body()
        ),
        time=cp.time,
    )
    with ledger.db.transaction() as tx:
        tx.execute(
            "INSERT INTO checkpoints(size, root, origin, signer, signature, time) VALUES (?,?,?,?,?,?)",
            (other.size, other.root, other.origin, other.signer, other.signature, other.time),
        )
    with pytest.raises(LedgerCorrupt, match="equivocation"):
        ledger.verify()


def test_signature_by_key_revoked_before_the_entry_is_detected(
    ledger: Ledger, actors: Actors
) -> None:
    populate(ledger, actors, runs=1)
    stolen = make_signer("stolen", "operator")
    add_key(ledger, stolen)
    revocation = ledger.append(
        type="key_revoked",
        body={"name": "stolen", "key_id": stolen.key_id, "reason": "lost"},
        signer=actors.board,
        subject=stolen.key_id,
    )
    ledger.append(type="note", body={"n": 1}, signer=stolen)  # written with the revoked key
    with pytest.raises(
        LedgerCorrupt,
        match=rf"^ledger entry {revocation.index + 1} \(note\) is signed by key "
        rf"{stolen.key_id[:16]}, revoked at entry {revocation.index}",
    ):
        ledger.verify()


def test_entry_signed_by_an_unknown_key_is_detected(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors, runs=1)
    ledger.append(type="note", body={"n": 1}, signer=make_signer("ghost", "operator"))
    with pytest.raises(LedgerCorrupt, match=r"^ledger entry 9 \(note\) is signed by key \w+ holding no role"):
        ledger.verify()


def test_entry_claiming_another_role_is_detected(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors, runs=1)
    from opal.trust.keyring import Signer
    from opal.trust.keys import KeyInfo

    liar = Signer(
        KeyInfo(**{**actors.stat.info.to_dict(), "role": "reviewer"}), actors.stat._private
    )
    ledger.append(type="bundle_submitted", body={"digest": "cd" * 32, "name": "x", "version": "1"}, signer=liar)
    with pytest.raises(LedgerCorrupt, match="claims role 'reviewer'"):
        ledger.verify()


def test_stored_leaf_hash_column_cannot_hide_a_rewrite(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    ledger.checkpoint(actors.op)
    conn = raw_conn(ledger)
    conn.execute("UPDATE ledger SET leaf_hash = ? WHERE idx = 3", (b"\x00" * 32,))
    with pytest.raises(LedgerCorrupt, match="stored leaf hash does not match"):
        Ledger(Database(ledger.db.path, url=""), origin="opal/test").checkpoint(actors.op)


def test_first_bad_entry_is_named_when_the_pool_checks_signatures(
    ledger: Ledger, actors: Actors
) -> None:
    populate(ledger, actors, runs=400)
    conn = raw_conn(ledger)
    for idx in (300, 1100):
        (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = ?", (idx,)).fetchone()
        conn.execute(
            "UPDATE ledger SET entry = ? WHERE idx = ?", (raw.replace(b'"run', b'"rux', 1), idx)
        )
    with pytest.raises(
        LedgerCorrupt, match=r"^ledger entry 300 \(run_requested\): signature does not verify"
    ):
        ledger.verify(workers=2)


def test_interior_node_presented_as_a_leaf_is_rejected() -> None:
    # Second preimage (RFC 6962 §2.1): the 64 bytes l0 || l1 hash, as a node,
    # to the root of a 2-leaf tree; as a leaf they must not.
    leaves = [merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")]
    root = merkle.root(leaves)
    assert merkle.node_hash(*leaves) == root
    forged = leaves[0] + leaves[1]
    with pytest.raises(LedgerCorrupt):
        merkle.verify_inclusion(
            leaf_hash=merkle.leaf_hash(forged), index=0, size=1, proof=[], root=root
        )
    cp = Checkpoint(origin="o", size=1, root=root.hex(), signer="", signature="", time="")
    with pytest.raises(LedgerCorrupt, match="not in the signed checkpoint"):
        check_proven_item({"index": 0, "entry": forged.decode("latin-1"), "proof": []}, cp)


def test_inclusion_proof_of_the_wrong_length_is_rejected(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    tree = ledger.tree()
    proof = tree.inclusion_proof(5)
    for bad in (proof + [proof[0]], proof[:-1]):
        with pytest.raises(LedgerCorrupt, match="proof"):
            merkle.verify_inclusion(
                leaf_hash=tree.leaf(5), index=5, size=tree.size, proof=bad, root=tree.root()
            )
