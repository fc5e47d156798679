"""Exports, receipts and witnessing: everything a board member checks away from the node."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from ledger_fixtures import Actors, populate

from opal.db import Database
from opal.errors import BadInputError, LedgerCorrupt, TrustError
from opal.ledger import Ledger
from opal.ledger.export import export_range, verify_export
from opal.ledger.receipts import make_receipt, verify_receipt
from opal.ledger.trace import trace
from opal.ledger.witness import cosign


def lines(ledger: Ledger, a: int, b: int) -> list[str]:
    return [json.dumps(item) for item in export_range(ledger, a, b)]


def test_export_verifies_offline_and_pins_the_log_key(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    ledger.checkpoint(actors.op)
    exported = lines(ledger, 4, 10)
    result = verify_export(exported, trusted_log_keys={actors.op.key_id})
    assert result["entries_checked"] == 6 and result["log_key_pinned"]
    with pytest.raises(TrustError):
        verify_export(exported, trusted_log_keys=set())  # an empty pin fails closed


def test_export_with_a_changed_entry_fails(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    ledger.checkpoint(actors.op)
    exported = lines(ledger, 0, 12)
    item = json.loads(exported[-1])
    item["entry"] = item["entry"].replace("released", "refused")
    exported[-1] = json.dumps(item)
    with pytest.raises(LedgerCorrupt, match="ledger entry 11 is not in the signed checkpoint"):
        verify_export(exported)


def test_export_with_a_dropped_entry_fails(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    ledger.checkpoint(actors.op)
    exported = lines(ledger, 0, 12)
    keys = sum(1 for line in exported if '"kind": "key"' in line)
    del exported[1 + keys + 3]
    with pytest.raises(LedgerCorrupt, match="ledger entry 3 is missing from the export"):
        verify_export(exported)
    with pytest.raises(LedgerCorrupt, match="truncated"):
        verify_export(lines(ledger, 0, 12)[:-1])


def test_export_needs_a_checkpoint_covering_the_range(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    with pytest.raises(BadInputError, match="opal ledger checkpoint"):
        list(export_range(ledger, 0, 5))


def test_receipt_proves_a_released_result_from_an_approved_run(
    ledger: Ledger, actors: Actors
) -> None:
    facts = populate(ledger, actors)
    ledger.checkpoint(actors.op)
    finished = facts["finished"][1]
    receipt = json.loads(
        json.dumps(make_receipt(ledger, finished.index))
    )  # survives JSON transport
    verify_receipt(
        receipt, result_digest=finished.body["result_digest"], trusted_log_keys={actors.op.key_id}
    )
    with pytest.raises(TrustError, match="not the released result"):
        verify_receipt(receipt, result_digest="00" * 32)
    with pytest.raises(TrustError, match="not a trusted log key"):
        verify_receipt(receipt, trusted_log_keys=set())


def test_receipt_without_approval_is_refused(ledger: Ledger, actors: Actors) -> None:
    facts = populate(ledger, actors)
    ledger.checkpoint(actors.op)
    finished = facts["finished"][0]
    receipt = make_receipt(ledger, finished.index)
    receipt["related"] = [r for r in receipt["related"] if "bundle_approved" not in r["entry"]]
    with pytest.raises(TrustError, match="0 reviewer approval"):
        verify_receipt(receipt, result_digest=finished.body["result_digest"])


def test_tampered_receipt_fails(ledger: Ledger, actors: Actors) -> None:
    facts = populate(ledger, actors)
    ledger.checkpoint(actors.op)
    receipt = make_receipt(ledger, facts["finished"][0].index)
    bad = copy.deepcopy(receipt)
    bad["entry"]["entry"] = bad["entry"]["entry"].replace(
        '"epsilon_spent":0.5', '"epsilon_spent":0.1'
    )
    with pytest.raises(LedgerCorrupt):
        verify_receipt(bad)
    bad = copy.deepcopy(receipt)
    bad["entry"]["proof"].append(bad["entry"]["proof"][0])  # one hash too many
    with pytest.raises(LedgerCorrupt, match="proof"):
        verify_receipt(bad)
    bad = copy.deepcopy(receipt)
    bad["checkpoint"]["root"] = "00" * 32
    with pytest.raises(LedgerCorrupt):
        verify_receipt(bad)


def test_witness_cosigns_only_consistent_checkpoints(tmp_path: Path, actors: Actors) -> None:
    db_path = tmp_path / "opal.db"
    ledger = Ledger(Database(db_path, url=""), origin="opal/test")
    populate(ledger, actors)
    ledger.checkpoint(actors.op)
    state = tmp_path / "witness" / "board1.json"
    first = cosign(ledger, actors.witness, state_file=state)
    assert first["consistency"] is None
    ledger.db.close()
    shutil.copy(db_path, tmp_path / "backup.db")
    ledger = Ledger(Database(db_path, url=""), origin="opal/test")
    ledger.append(type="note", body={"n": 1}, signer=actors.op)
    ledger.checkpoint(actors.op)
    second = cosign(ledger, actors.witness, state_file=state)
    assert second["consistency"]["from_size"] == 12 and second["consistency"]["to_size"] == 13
    assert len(ledger.verify().to_dict()) and ledger.verify().cosignatures == 2
    # The operator restores the backup and writes a different history.
    ledger.db.close()
    shutil.copy(tmp_path / "backup.db", db_path)
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    forked = Ledger(Database(db_path, url=""), origin="opal/test")
    forked.append(type="note", body={"n": 2}, signer=actors.op)
    forked.checkpoint(actors.op)
    with pytest.raises(LedgerCorrupt, match="equivocation|does not extend"):
        cosign(forked, actors.witness, state_file=state)


def test_trace_lists_the_lifecycle(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors)
    ledger.append(
        type="bundle_revoked",
        body={"digest": "ab" * 32, "name": "pop", "version": "1.0.0", "reason": "bug"},
        signer=actors.board,
        subject="pop",
    )
    t = trace(ledger, "pop")
    assert t["summary"] == {"versions": 1, "approvals": 1, "runs": 2, "released": 2, "revoked": 1}
    assert all({"requested", "started", "finished"} <= set(r) for r in t["runs"])
    with pytest.raises(BadInputError):
        trace(ledger, "nothing")


def test_receipt_carries_the_board_grant_of_every_signer(ledger: Ledger, actors: Actors) -> None:
    from ledger_fixtures import add_key, install_board

    install_board(ledger, actors.board, [])
    for s in (actors.op, actors.stat, actors.reviewer):
        add_key(ledger, s, by=actors.board)  # the board grants each role
    digest = "cd" * 32
    ledger.append(
        type="bundle_approved", body={"digest": digest}, signer=actors.reviewer, subject="x"
    )
    ledger.append(
        type="run_requested",
        body={"run_id": "r", "digest": digest},
        signer=actors.stat,
        subject="x",
    )
    ledger.append(
        type="run_started", body={"run_id": "r", "digest": digest}, signer=actors.op, subject="x"
    )
    done = ledger.append(
        type="run_finished",
        body={"run_id": "r", "outcome": "released", "result_digest": "ee" * 32},
        signer=actors.op,
        subject="x",
    )
    ledger.checkpoint(actors.op)
    verify_receipt(make_receipt(ledger, done.index), result_digest="ee" * 32)
