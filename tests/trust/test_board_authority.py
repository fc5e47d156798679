"""Roles come from the board, decisions from signed content: attacks by the operator, who holds the
node, its database and its keys. Each passed on the old main (roles from the keyring, decisions from
unsigned columns, self-signed keys, any key for any entry type)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from trust_world import bundle_folder, make_node, submitted

from opal.canonical import canonical_json
from opal.cli import cli
from opal.errors import LedgerCorrupt, TrustError
from opal.ledger import merkle
from opal.ledger.records import ENTRY_DOMAIN, envelope
from opal.node import Node
from opal.trust.review import approve, verify_for_run


def refused(node: Node, digest: str) -> str:
    with pytest.raises(TrustError) as info:
        verify_for_run(node, digest)
    return info.value.message


def raw(node: Node) -> sqlite3.Connection:
    node.db.close()
    conn = sqlite3.connect(str(node.db.path), isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_update")
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_delete")
    return conn


def ledger_verdict(node: Node) -> str:
    with pytest.raises(LedgerCorrupt) as info:
        Node.open(node.home.root).ledger.verify()
    return info.value.message


def test_operator_minted_reviewers_cannot_approve(tmp_path: Path) -> None:
    """`opal keys new r1 --role reviewer` and r2 on the operator's node, two approvals: not a run."""
    node = make_node(tmp_path)
    digest = submitted(node, tmp_path)
    home = str(node.home.root)
    for name in ("r1", "r2"):
        assert CliRunner().invoke(cli, ["--home", home, "keys", "new", name, "--role", "reviewer"]).exit_code == 0
        result = CliRunner().invoke(cli, ["--home", home, "algo", "approve", "population_density", "--key", name])
        assert result.exit_code == 6 and f"key '{name}' is not a reviewer key in the trust policy v1" in result.stderr
    # the operator writes the approvals into the ledger himself, signed by r1 and r2
    for name in ("r1", "r2"):
        signer = node.keyring.signer(name)
        statement = {
            "_type": "https://opal.dev/approval/v1",
            "subject": {"name": "population_density@1.0.0", "digest": {"sha256": digest}},
            "reviewer": signer.key_id, "verdict": "approve",
            "time": "2026-01-01T00:00:00Z", "expires": "2099-01-01T00:00:00Z", "comment": "",
        }
        node.ledger.append(
            type="bundle_approved",
            body={"digest": digest, "name": "population_density", "version": "1.0.0", "statement": statement,
                  "signature": signer.sign("bundle-approval", canonical_json(statement))},
            signer=signer, subject="population_density",
        )
    message = refused(node, digest)
    assert "0 valid approval(s)" in message and "approval by r1 does not count: no board-signed role" in message
    assert "is signed by key" in ledger_verdict(node) and "only a reviewer key may sign it" in ledger_verdict(node)


def test_without_a_board_the_operator_alone_runs_nothing(tmp_path: Path) -> None:
    node = make_node(tmp_path, policy=False)
    folder = str(bundle_folder(tmp_path))
    result = CliRunner().invoke(cli, ["--home", str(node.home.root), "algo", "submit", folder, "--key", "sam"])
    assert result.exit_code == 6 and result.stderr == (
        "opal: error: no board-signed trust policy is installed on this node; the board installs one with "
        "opal trust init --board KEY (or opal trust apply FILE)\n"
    )
    from opal.trust.governance import require_board_policy

    with pytest.raises(TrustError) as info:
        require_board_policy(node)
    assert info.value.exit_code == 6 and "opal trust init --board KEY" in info.value.message


def test_a_self_vouching_key_is_refused(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    digest = submitted(node, tmp_path, approvers=("rita",))
    node.keyring.new("mallory", "reviewer", node.ledger)
    mallory = node.keyring.signer("mallory")
    body = {"name": "mallory", "role": "reviewer", "key_id": mallory.key_id, "public_key": mallory.info.public_key}
    entry = node.ledger.append(type="key_added", body=body, signer=mallory, subject=mallory.key_id)
    with pytest.raises(TrustError, match="a key cannot vouch for itself"):
        node.keyring.import_public({**body, "name": "m2"}, node.ledger, by=mallory)
    approve_as(node, digest, "mallory")
    assert "approval by mallory does not count" in refused(node, digest)
    assert ledger_verdict(node).startswith(f"ledger entry {entry.index} (key_added) is signed by key")


def approve_as(node: Node, digest: str, name: str) -> None:
    """The operator records an approval signed by ``name`` (a key he holds), bypassing the role check."""
    signer = node.keyring.signer(name)
    statement = {
        "_type": "https://opal.dev/approval/v1",
        "subject": {"name": "population_density@1.0.0", "digest": {"sha256": digest}},
        "reviewer": signer.key_id, "verdict": "approve",
        "time": "2026-11-01T00:00:00Z", "expires": "2099-01-01T00:00:00Z", "comment": "",
    }
    node.ledger.append(
        type="bundle_approved",
        body={"digest": digest, "name": "population_density", "version": "1.0.0", "statement": statement,
              "signature": signer.sign("bundle-approval", canonical_json(statement))},
        signer=signer, subject="population_density",
    )


def test_a_board_signed_key_entry_grants_its_role(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    digest = submitted(node, tmp_path, approvers=("rita",))
    node.keyring.new("rosa", "reviewer", node.ledger, by=node.keyring.signer("b1"))
    approve(node, digest, signer=node.keyring.signer("rosa"))
    verify_for_run(node, digest)
    Node.open(node.home.root).ledger.verify()


def test_an_approval_re_signed_by_the_operator_key_is_refused(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    assert Node.open(node.home.root).ledger.verify().size == node.ledger.size()
    approval = node.ledger.entries(type="bundle_approved")[-1]
    olga = node.keyring.signer("olga")
    conn = raw(node)
    entry = json.loads(approval.raw)["entry"]
    entry.update(actor=olga.key_id, actor_role="operator")
    signed = canonical_json(entry)
    new = envelope(signed, olga.sign(ENTRY_DOMAIN, signed))
    conn.execute("UPDATE ledger SET entry = ?, actor = ?, leaf_hash = ? WHERE idx = ?",
                 (new, olga.key_id, merkle.leaf_hash(new), approval.index))
    conn.close()
    assert ledger_verdict(node) == (
        f"ledger entry {approval.index} (bundle_approved) is signed by key {olga.key_id[:16]} holding operator "
        "in the trust policy v1; only a reviewer key may sign it"
    )
    node = Node.open(node.home.root)
    assert "1 valid approval(s)" in refused(node, digest)


def test_relabelled_columns_do_not_un_revoke_and_verify_names_them(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    node.keyring.revoke("ravi", "left", by=node.keyring.signer("b1"), ledger=node.ledger)
    assert "key revoked on" in refused(node, digest)
    revocation = node.ledger.entries(type="key_revoked")[-1]
    conn = raw(node)
    conn.execute("UPDATE keys SET revoked_at = NULL, revoke_reason = NULL")
    conn.execute("UPDATE ledger SET subject = 'nothing' WHERE idx = ?", (revocation.index,))
    conn.close()
    node = Node.open(node.home.root)
    assert "approval by ravi does not count: key revoked on" in refused(node, digest)
    assert ledger_verdict(node) == (
        f"ledger entry {revocation.index} has subject column 'nothing' but its signed entry says "
        f"'{revocation.subject}'; the database index was edited"
    )


def test_relabelled_policy_rows_fail_closed_and_verify_names_them(tmp_path: Path) -> None:
    """Relabel the trust_policy entry and drop the stored copies: no board policy means no roles, never
    the old keyring roles; verify names the relabelled entry."""
    node = make_node(tmp_path)
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    conn = raw(node)
    conn.execute("UPDATE ledger SET type = 'note' WHERE type = 'trust_policy'")
    conn.execute("DELETE FROM trust_policies")
    conn.close()
    (node.home.governance_dir / "trust_policy.json").unlink()
    node = Node.open(node.home.root)
    assert "no board-signed trust policy is installed" in refused(node, digest)
    assert ledger_verdict(node).startswith("ledger entry 0 has type column 'note' but its signed entry says")


def test_a_worker_will_not_start_without_a_board_policy(tmp_path: Path) -> None:
    node = make_node(tmp_path, policy=False)
    result = CliRunner().invoke(cli, ["--home", str(node.home.root), "worker", "start", "--dataset", "demo"])
    assert result.exit_code == 6
    assert "no board-signed trust policy is installed on this node" in result.stderr
    assert result.stderr.count("\n") == 1


SMALL_ORDER_KEYS = {
    "identity": (1).to_bytes(32, "little"),
    "order 2": (2**255 - 20).to_bytes(32, "little"),
    "order 4": bytes(32),
    "non-canonical identity": (2**255 - 18).to_bytes(32, "little"),
}


@pytest.mark.parametrize("kind", sorted(SMALL_ORDER_KEYS))
def test_small_order_and_non_canonical_keys_are_refused_wherever_a_key_enters(tmp_path: Path, kind: str) -> None:
    from opal.errors import BadInputError
    from opal.trust.keys import key_id_of
    from opal.trust.policy import TrustPolicy

    raw = SMALL_ORDER_KEYS[kind]
    node = make_node(tmp_path)
    with pytest.raises(BadInputError, match="cannot import 'evil'"):
        node.keyring.import_public({"name": "evil", "role": "reviewer", "public_key": raw.hex()}, node.ledger)
    signed = json.loads((node.home.governance_dir / "trust_policy.json").read_text())["signed"]
    signed["keys"][key_id_of(raw)] = {"name": "evil", "public_key": raw.hex()}
    with pytest.raises(TrustError, match="small-order|not a canonical"):
        TrustPolicy.from_signed(signed)
    # a board-signed key_added carrying it is named by verify
    body = {"name": "evil", "role": "reviewer", "key_id": key_id_of(raw), "public_key": raw.hex()}
    entry = node.ledger.append(type="key_added", body=body, signer=node.keyring.signer("b1"), subject=body["key_id"])
    message = ledger_verdict(node)
    assert message.startswith(f"ledger entry {entry.index} (key_added): the added key is")


def test_a_key_entry_in_a_board_keys_name_without_its_signature_grants_nothing(tmp_path: Path) -> None:
    """The operator appends a key_added row naming board key b1 as its signer but signed with his
    own key (leaf hash recomputed): the node's decisions check the board's signature, not the name."""
    from opal.trust.keyring import Signer

    node = make_node(tmp_path)
    digest = submitted(node, tmp_path, approvers=("rita",))
    home = str(node.home.root)
    assert CliRunner().invoke(cli, ["--home", home, "keys", "new", "r9", "--role", "reviewer"]).exit_code == 0
    node = Node.open(node.home.root)
    r9, b1, olga = (node.keyring.signer(n) for n in ("r9", "b1", "olga"))
    posing = Signer(b1.info, olga._private)  # b1's id and role, the operator's private key
    node.ledger.append(
        type="key_added",
        body={"name": "r9", "role": "reviewer", "key_id": r9.key_id, "public_key": r9.info.public_key},
        signer=posing, subject=r9.key_id,
    )
    with pytest.raises(TrustError, match="not a reviewer key"):
        approve(node, digest, signer=r9)
    assert "1 valid approval(s)" in refused(node, digest)
    assert "signature does not verify" in ledger_verdict(node)


def test_rewritten_entry_bytes_under_an_untouched_leaf_hash_stop_every_decision(tmp_path: Path) -> None:
    # The auditor's incremental check rebuilds the audited prefix from the leaf-hash
    # column, so the bytes of an old revocation, rewritten alone, must not un-revoke.
    node = make_node(tmp_path)
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    node.keyring.revoke("ravi", "left", by=node.keyring.signer("b1"), ledger=node.ledger)
    revocation = node.ledger.entries(type="key_revoked")[-1]
    conn = raw(node)
    (stored,) = conn.execute("SELECT entry FROM ledger WHERE idx = ?", (revocation.index,)).fetchone()
    doc = json.loads(stored)
    doc["entry"]["body"]["key_id"] = "0" * 64                    # revoke nobody
    conn.execute("UPDATE ledger SET entry = ? WHERE idx = ?", (canonical_json(doc), revocation.index))
    conn.close()
    node = Node.open(node.home.root)
    with pytest.raises(LedgerCorrupt, match=f"ledger entry {revocation.index} no longer matches its leaf hash"):
        verify_for_run(node, digest)
