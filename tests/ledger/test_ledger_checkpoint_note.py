"""Checkpoints are C2SP tlog-checkpoint signed notes and cosignatures tlog-cosignature/v1, as an
independent reader written from the specs (tests/ledger/c2sp_note.py) sees them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from c2sp_note import parse_checkpoint, parse_note, verify_cosignature, verify_log_signature
from click.testing import CliRunner
from cryptography.exceptions import InvalidSignature

from opal.cli import cli
from opal.node import Node


def opal(home: Path, *args: str) -> dict[str, object]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout) if result.stdout.startswith("{") else {}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "node"
    for name, role in (("op", "operator"), ("b1", "board"), ("r1", "reviewer"), ("w1", "witness")):
        opal(h, "keys", "new", name, "--role", role)
    opal(h, "trust", "init", "--board", "b1", "--approvals", "1")
    return h


def test_checkpoint_is_a_c2sp_signed_note(home: Path) -> None:
    cp = opal(home, "ledger", "checkpoint")
    node = Node.open(home)
    note = parse_note(str(cp["note"]))
    body = parse_checkpoint(note.text)
    assert body.origin == node.ledger.origin == cp["origin"]
    assert body.size == cp["size"] == node.ledger.size() == 1
    assert body.root == bytes.fromhex(str(cp["root"])) == node.ledger.tree().root()
    assert body.extensions == []
    public = bytes.fromhex(node.keyring.get("op").public_key)
    verify_log_signature(note, body.origin, public)
    with pytest.raises(InvalidSignature):
        verify_log_signature(note, body.origin, bytes.fromhex(node.keyring.get("b1").public_key))
    forged = parse_note(str(cp["note"]).replace("\n1\n", "\n2\n", 1))
    with pytest.raises(InvalidSignature):
        verify_log_signature(forged, body.origin, public)


def test_cosignature_is_tlog_cosignature_v1_with_its_time(home: Path) -> None:
    opal(home, "ledger", "checkpoint")
    result = opal(home, "ledger", "cosign", "--key", "w1", "--json")
    node = Node.open(home)
    note = parse_note(str(result["note"]))
    witness = node.keyring.get("w1")
    name = f"opal-witness/{witness.key_id[:16]}"
    assert [n for n, _ in note.signatures] == [node.ledger.origin, name]
    when = verify_cosignature(note, name, bytes.fromhex(witness.public_key))
    cosignature = result["cosignature"]
    assert isinstance(cosignature, dict)
    assert str(cosignature["time"]).endswith("Z") and abs(when - _epoch(str(cosignature["time"]))) == 0
    blob = dict(note.signatures)[name]
    tampered = blob[:4] + (int.from_bytes(blob[4:12], "big") + 1).to_bytes(8, "big") + blob[12:]
    note.signatures = [(name, tampered)]
    with pytest.raises(InvalidSignature):
        verify_cosignature(note, name, bytes.fromhex(witness.public_key))
    assert base64.b64decode(str(cosignature["signature"])) == blob[12:]


def _epoch(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
