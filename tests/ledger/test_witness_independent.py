"""`opal witness` runs from the witness's own home: its key and its memory of the log are not in the
node's OPAL_HOME, so the operator can neither delete that memory nor have a fork cosigned as "first"."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from opal.cli import cli
from opal.node import Node


def opal(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout + result.stderr


def ok(home: Path, *args: str) -> str:
    code, out = opal(home, *args)
    assert code == 0, out
    return out


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    node, witness = tmp_path / "node", tmp_path / "witness-home"
    ok(witness, "keys", "new", "w1", "--role", "witness")
    (tmp_path / "w1.json").write_text(ok(witness, "keys", "export", "w1"))
    for name, role in (("op", "operator"), ("b1", "board"), ("r1", "reviewer")):
        ok(node, "keys", "new", name, "--role", role)
    ok(node, "keys", "import", str(tmp_path / "w1.json"))  # public part only: the board names it a witness
    ok(node, "trust", "init", "--board", "b1", "--approvals", "1")
    notes(node, 5)
    return node, witness


def notes(node_home: Path, n: int, tag: str = "") -> None:
    node = Node.open(node_home)
    node.ledger.append_many([{"type": "note", "body": {"i": i, "tag": tag}} for i in range(n)],
                            signer=node.keyring.signer("op"))
    node.ledger.checkpoint(node.keyring.signer("op"))
    node.db.close()


def test_witness_keeps_its_memory_in_its_own_home_and_refuses_a_fork(world: tuple[Path, Path], tmp_path: Path) -> None:
    node, witness = world
    assert "the first you saw" in ok(witness, "witness", "cosign", "--key", "w1", "--node", str(node))
    assert list((witness / "witness").glob("*.json")) and not (node / "witness").exists()
    assert not (node / "keys" / "w1.pem").exists()
    backup = tmp_path / "backup.db"
    src = sqlite3.connect(str(node / "opal.db"))
    dst = sqlite3.connect(str(backup))
    src.backup(dst)
    dst.close()
    src.close()
    notes(node, 2)
    assert "consistent with the size 6" in ok(witness, "witness", "cosign", "--key", "w1", "--node", str(node))
    # the operator restores the old copy, writes another history and asks again
    old, live = sqlite3.connect(str(backup)), sqlite3.connect(str(node / "opal.db"))
    old.backup(live)
    live.close()
    old.close()
    notes(node, 3, tag="fork")
    code, out = opal(witness, "witness", "cosign", "--key", "w1", "--node", str(node))
    assert code == 7 and ("does not extend" in out or "equivocation" in out)


def test_witness_cosigns_an_export_and_the_offline_audit_counts_it(world: tuple[Path, Path], tmp_path: Path) -> None:
    node, witness = world
    policy = node / "governance" / "trust_policy.json"
    export = tmp_path / "log.jsonl"
    ok(node, "ledger", "export", "--out", str(export))
    code, out = opal(tmp_path / "auditor", "ledger", "verify", "--file", str(export), "--policy", str(policy))
    assert code == 7 and "0 valid witness cosignature(s), your trust policy v1 needs 1" in out
    cosignature = tmp_path / "cs.json"
    ok(witness, "witness", "cosign", "--key", "w1", "--file", str(export), "--out", str(cosignature))
    ok(node, "ledger", "add-cosignature", str(cosignature))
    ok(node, "ledger", "export", "--out", str(export))
    result = json.loads(ok(tmp_path / "auditor", "ledger", "verify", "--file", str(export), "--policy", str(policy),
                           "--json"))
    assert result["cosignatures_checked"] == 1 and result["policy"] == "trust policy v1"
    assert ok(node, "ledger", "verify")


def test_a_witness_refuses_to_run_from_the_node_home(world: tuple[Path, Path]) -> None:
    node, _ = world
    code, out = opal(node, "witness", "cosign", "--key", "op", "--node", str(node))
    assert code in (2, 6)
