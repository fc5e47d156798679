"""The board-signed trust policy: bootstrap, thresholds, version chain (TUF root rotation)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from trust_world import make_node, submitted

from opal.errors import BadInputError, TrustError
from opal.node import Node
from opal.trust.governance import (
    draft_policy,
    init_policy,
    install_policy,
    policy_in_force,
    sign_policy,
)
from opal.trust.policy import POLICY_DOMAIN, TrustPolicy
from opal.trust.review import verify_for_run


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path, board=3, policy=False)


def signers(node: Node, *names: str):  # type: ignore[no-untyped-def]
    return [node.keyring.signer(n) for n in names]


def v1(node: Node) -> TrustPolicy:
    return init_policy(
        node, signers=signers(node, "b1", "b2"), board=["b1", "b2", "b3"], threshold=2,
        reviewer=["rita", "ravi", "rex"], approvals=2,
    )


def test_without_a_board_policy_nobody_holds_a_role(node: Node, tmp_path: Path) -> None:
    """Operator-minted reviewers: keys labelled reviewer on the operator's node, no board, count for nothing."""
    policy = policy_in_force(node)
    assert not policy.signed and policy.version == 0 and policy.role_keys("reviewer") == frozenset()
    with pytest.raises(TrustError, match="no board-signed trust policy is installed on this node; the board installs"):
        submitted(node, tmp_path)


def test_an_unsigned_policy_file_fails_closed(node: Node, tmp_path: Path) -> None:
    (node.home.governance_dir / "trust_policy.json").write_text(json.dumps({"threshold": 1}))
    with pytest.raises(TrustError, match="never installed"):
        policy_in_force(node)
    with pytest.raises(TrustError, match="not a signed trust policy"):
        TrustPolicy.load(node.home.governance_dir / "trust_policy.json")


def test_init_installs_version_1_recorded_in_ledger_and_governance(node: Node) -> None:
    policy = v1(node)
    assert policy.version == 1 and policy.board_threshold == 2 and policy.threshold == 2
    assert policy_in_force(node).digest == policy.digest
    entry = node.ledger.entries(type="trust_policy")[-1]
    assert entry.body["version"] == 1 and entry.body["digest"] == policy.digest
    on_disk = node.home.governance_dir / "trust_policy.json"
    assert TrustPolicy.load(on_disk).digest == policy.digest
    assert node.ledger.verify().size == node.ledger.size()


def test_policy_signed_by_fewer_than_threshold_board_keys_is_refused(node: Node) -> None:
    with pytest.raises(TrustError, match=r"has 1 valid board signature\(s\) from trust policy v1, needs 2"):
        init_policy(node, signers=signers(node, "b1"), board=["b1", "b2", "b3"], threshold=2, reviewer=["rita", "ravi"])
    assert not policy_in_force(node).signed


def test_same_board_key_signing_twice_counts_once(node: Node) -> None:
    envelope = sign_policy(draft_policy(node, board=["b1", "b2"], threshold=2, reviewer=["rita", "ravi"]), node.keyring.signer("b1"))
    envelope["signatures"].append(dict(envelope["signatures"][0]))
    with pytest.raises(TrustError, match="needs 2"):
        install_policy(node, envelope, signer=node.keyring.signer("b1"))


def test_forged_and_truncated_board_signatures_do_not_count(node: Node) -> None:
    envelope = sign_policy(draft_policy(node, board=["b1", "b2"], threshold=2, reviewer=["rita", "ravi"]), node.keyring.signer("b1"))
    b2 = node.keyring.get("b2").key_id
    good = envelope["signatures"][0]["sig"]
    for bad in (good[:-8] + "AAAAAAA=", good[:40]):
        attempt = {"signed": envelope["signed"], "signatures": [*envelope["signatures"], {"keyid": b2, "sig": bad}]}
        with pytest.raises(TrustError, match="has 1 valid board signature"):
            install_policy(node, attempt, signer=node.keyring.signer("b1"))


def test_signature_by_a_non_board_key_does_not_count(node: Node) -> None:
    envelope = draft_policy(node, board=["b1", "b2"], threshold=2, reviewer=["rita", "ravi"])
    envelope = sign_policy(envelope, node.keyring.signer("b1"))
    rita = node.keyring.signer("rita")
    from opal.canonical import canonical_json

    envelope["signatures"].append({"keyid": rita.key_id, "sig": rita.sign(POLICY_DOMAIN, canonical_json(envelope["signed"]))})
    with pytest.raises(TrustError, match="has 1 valid board signature"):
        install_policy(node, envelope, signer=node.keyring.signer("b1"))
    with pytest.raises(TrustError, match="trust policies are signed by board keys"):
        sign_policy(envelope, rita)


def test_rotation_to_version_2_needs_old_and_new_board_thresholds(node: Node) -> None:
    v1(node)
    node.keyring.new("b4", "board", node.ledger)
    node.keyring.new("b5", "board", node.ledger)
    envelope = draft_policy(node, board=["b4", "b5"], threshold=2)
    assert envelope["signed"]["version"] == 2
    for name in ("b4", "b5"):
        envelope = sign_policy(envelope, node.keyring.signer(name))
    with pytest.raises(TrustError, match=r"trust policy v2 has 0 valid board signature\(s\) from trust policy v1, needs 2"):
        install_policy(node, envelope, signer=node.keyring.signer("b1"))
    envelope = sign_policy(envelope, node.keyring.signer("b1"))
    with pytest.raises(TrustError, match="from trust policy v1, needs 2"):
        install_policy(node, envelope, signer=node.keyring.signer("b1"))
    envelope = sign_policy(envelope, node.keyring.signer("b3"))
    policy = install_policy(node, envelope, signer=node.keyring.signer("b1"))
    assert policy.version == 2 and policy_in_force(node).version == 2
    assert [e.body["version"] for e in node.ledger.entries(type="trust_policy")] == [1, 2]


def test_a_policy_that_jumps_a_version_is_refused(node: Node) -> None:
    v1(node)
    envelope = draft_policy(node, approvals=3)
    envelope["signed"]["version"] = 3
    for name in ("b1", "b2", "b3"):
        envelope = sign_policy(envelope, node.keyring.signer(name))
    with pytest.raises(TrustError, match="new trust policy version 3 must be exactly 2"):
        install_policy(node, envelope, signer=node.keyring.signer("b1"))


def test_replaying_version_1_is_refused(node: Node) -> None:
    v1(node)
    first = json.loads(node.db.one("SELECT document FROM trust_policies WHERE version = 1")["document"])
    with pytest.raises(TrustError, match="must be exactly 2"):
        install_policy(node, first, signer=node.keyring.signer("b1"))


def test_deleting_the_stored_policy_copies_changes_nothing(node: Node) -> None:
    v1(node)
    envelope = draft_policy(node, approvals=3)
    for name in ("b1", "b2"):
        envelope = sign_policy(envelope, node.keyring.signer(name))
    install_policy(node, envelope, signer=node.keyring.signer("b1"))
    with node.db.transaction() as tx:  # the table is a copy: the signed ledger entries decide
        tx.execute("DELETE FROM trust_policies")
    assert policy_in_force(node).version == 2 and policy_in_force(node).threshold == 3


def test_a_policy_entry_edited_in_place_fails_closed(node: Node) -> None:
    v1(node)
    conn = sqlite3.connect(str(node.db.path), isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_update")
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE type = 'trust_policy'").fetchone()
    edited = raw.replace(b'"reviewer":{"keyids"', b'"reviewer":{"keyids"').replace(b'"threshold":2}', b'"threshold":1}')
    assert edited != raw
    # the leaf hash rewritten too (else the entry is refused before its signature is read)
    conn.execute("UPDATE ledger SET entry = ?, leaf_hash = ? WHERE type = 'trust_policy'",
                 (edited, hashlib.sha256(b"\x00" + edited).digest()))
    conn.close()
    with pytest.raises(TrustError, match="valid board signature"):
        policy_in_force(node)


def test_bad_policy_shapes_are_refused(node: Node) -> None:
    with pytest.raises(BadInputError, match="needs at least one reviewer"):
        draft_policy(node, board=["b1"], reviewer=[])
    with pytest.raises(BadInputError, match="reviewer threshold must be between 1 and 2"):
        draft_policy(node, board=["b1"], reviewer=["rita", "ravi"], approvals=3)
    with pytest.raises(BadInputError, match="has role 'operator' in the keyring; a reviewer key is needed"):
        draft_policy(node, board=["b1"], reviewer=["olga"])


def test_policy_threshold_and_lifetime_apply_to_runs(node: Node, tmp_path: Path) -> None:
    init_policy(node, signers=signers(node, "b1"), board=["b1"], threshold=1, reviewer=["rita", "ravi", "rex"], approvals=3)
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    with pytest.raises(TrustError, match=r"2 valid approval\(s\), the trust policy needs 3 \(trust policy v1\)"):
        verify_for_run(node, digest)


def test_policy_restricting_statisticians_refuses_other_authors(node: Node, tmp_path: Path) -> None:
    node.keyring.new("sue", "statistician", node.ledger)
    init_policy(node, signers=signers(node, "b1"), board=["b1"], threshold=1, reviewer=["rita", "ravi"], statistician=["sue"])
    with pytest.raises(TrustError, match="is not a statistician key in the trust policy v1"):
        submitted(node, tmp_path)
