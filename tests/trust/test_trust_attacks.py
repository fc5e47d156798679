"""Adversarial tests of the worker's check before every run (verify_for_run)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from trust_world import (
    forge_approval,
    forged_signature,
    make_node,
    second_name,
    stored_file,
    submitted,
)

from opal.bundle.digest import bundle_digest
from opal.errors import BadInputError, TrustError
from opal.node import Node
from opal.trust.governance import init_policy
from opal.trust.review import approve, pin_version, revoke_bundle, verify_for_run


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path, board=1)


def refused(node: Node, digest: str) -> str:
    with pytest.raises(TrustError) as info:
        verify_for_run(node, digest)
    message = info.value.message
    assert "\n" not in message
    return message


def test_approved_bundle_runs_and_its_source_is_the_hashed_bytes(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    bundle = verify_for_run(node, digest)
    assert bundle.digest == digest == bundle_digest(bundle.files)
    stored = (node.home.registry_dir / digest / "algorithm.py").read_bytes()
    assert bundle.source.encode("utf-8") == stored == bundle.files["algorithm.py"]


def test_unapproved_bundle_is_refused(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita",))
    assert "1 valid approval(s), the trust policy needs 2" in refused(node, digest)


# 1. one byte changed after approval
def test_one_byte_changed_after_approval_is_refused(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    target = stored_file(node, digest, "algorithm.py")
    data = bytearray(target.read_bytes())
    data[10] ^= 0x01
    target.write_bytes(bytes(data))
    assert "changed after submission" in refused(node, digest)


# 2. a file added; a file renamed; a cache file dropped next to the code
@pytest.mark.parametrize("tamper", ["add", "rename", "pycache"])
def test_file_added_or_renamed_after_approval_is_refused(node: Node, tmp_path: Path, tamper: str) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    folder = node.home.registry_dir / digest
    folder.chmod(0o755)
    if tamper == "add":
        (folder / "helper.py").write_text("import os\n")
    elif tamper == "rename":
        (folder / "README.md").rename(folder / "README.txt")
    else:
        (folder / "__pycache__").mkdir()
        (folder / "__pycache__" / "algorithm.cpython-311.pyc").write_bytes(b"\x00" * 16)
    assert "changed after submission" in refused(node, digest)


# 3. an approval of bundle A presented for bundle B
def replay_approvals(node: Node, source: str, target: str, *, edit: bool = False) -> None:
    """Record ``source``'s signed approvals again as approvals of ``target`` (each under its reviewer's key)."""
    for e in node.ledger.entries(type="bundle_approved"):
        if e.body["digest"] != source:
            continue
        statement = dict(e.body["statement"])
        if edit:
            statement["subject"] = {"name": "population_density@1.1.0", "digest": {"sha256": target}}
        signer = next(node.keyring.signer(k.name) for k in node.keyring.by_id(e.actor))
        node.ledger.append(
            type="bundle_approved",
            body={**e.body, "digest": target, "version": "1.1.0", "statement": statement},
            signer=signer,
            subject=e.subject,
        )


def test_approval_for_another_bundle_does_not_count(node: Node, tmp_path: Path) -> None:
    a = submitted(node, tmp_path, "1.0.0", approvers=("rita", "ravi"))
    b = submitted(node, tmp_path, "1.1.0", comment="bundle B")
    replay_approvals(node, a, b)
    message = refused(node, b)
    assert "0 valid approval(s)" in message and f"is for bundle {a[:12]}, not {b[:12]}" in message


def test_approval_statement_edited_to_name_another_bundle_does_not_verify(node: Node, tmp_path: Path) -> None:
    a = submitted(node, tmp_path, "1.0.0", approvers=("rita", "ravi"))
    b = submitted(node, tmp_path, "1.1.0", comment="bundle B")
    replay_approvals(node, a, b, edit=True)
    message = refused(node, b)
    assert "0 valid approval(s)" in message and "signature does not verify" in message


def test_rows_in_the_approvals_table_count_for_nothing(node: Node, tmp_path: Path) -> None:
    """Approvals count only from the ledger: rows copied into the table by the operator do not."""
    a = submitted(node, tmp_path, "1.0.0", approvers=("rita", "ravi"))
    b = submitted(node, tmp_path, "1.1.0", comment="bundle B")
    with node.db.transaction() as tx:
        for row in node.db.query("SELECT * FROM approvals WHERE digest = ?", (a,)):
            tx.execute(
                "INSERT INTO approvals(digest, key_id, statement, signature, verdict, time) VALUES (?,?,?,?,?,?)",
                (b, row["key_id"], row["statement"], row["signature"], row["verdict"], row["time"]),
            )
    assert "0 valid approval(s)" in refused(node, b)


# 4. the same reviewer twice; one key under two names
def test_same_reviewer_approving_twice_counts_once(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "rita"))
    assert "1 valid approval(s), the trust policy needs 2" in refused(node, digest)


def test_one_key_under_two_names_counts_once(node: Node, tmp_path: Path) -> None:
    second_name(node, "rita", "rita-again")
    digest = submitted(node, tmp_path, approvers=("rita", "rita-again"))
    assert "1 valid approval(s), the trust policy needs 2" in refused(node, digest)


def test_a_key_cannot_be_imported_under_a_second_role(node: Node) -> None:
    export = json.loads(node.keyring.export("olga"))
    export["role"] = "reviewer"
    with pytest.raises(BadInputError, match="already known as 'olga' with role 'operator'"):
        node.keyring.import_public(export, node.ledger, as_name="olga-reviewer")


def test_a_keyring_row_cannot_give_a_key_a_second_role(node: Node, tmp_path: Path) -> None:
    olga = node.keyring.get("olga")
    with node.db.transaction() as tx:  # an attacker writing the keyring table directly
        tx.execute(
            "INSERT INTO keys(name, key_id, role, public_key, created) VALUES (?,?,?,?,?)",
            ("olga-rev", olga.key_id, "reviewer", olga.public_key, olga.created),
        )
    digest = submitted(node, tmp_path, approvers=("rita",))
    forge_approval(node, digest, signer_name="olga")
    assert "approval by olga does not count: it is not a reviewer key in the trust policy v1" in refused(node, digest)


# 5. approvals by keys that are not reviewers
@pytest.mark.parametrize("who", ["sam", "olga", "b1"])
def test_approval_by_a_non_reviewer_does_not_count(node: Node, tmp_path: Path, who: str) -> None:
    digest = submitted(node, tmp_path, approvers=("rita",))
    forge_approval(node, digest, signer_name=who)
    message = refused(node, digest)
    assert "1 valid approval(s)" in message
    assert f"approval by {who} does not count: it is not a reviewer key in the trust policy v1" in message


def test_non_reviewer_and_author_cannot_sign_approvals(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path)
    for who in ("sam", "olga"):
        with pytest.raises(TrustError, match="is not a reviewer key"):
            approve(node, digest, signer=node.keyring.signer(who))


# 6. revoked key; expired approval
def test_approval_by_a_revoked_key_does_not_count(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    verify_for_run(node, digest)
    node.keyring.revoke("ravi", "laptop stolen", by=node.keyring.signer("olga"), ledger=node.ledger)
    assert "approval by ravi does not count: key revoked on" in refused(node, digest)


def test_revocation_in_the_ledger_survives_a_cleared_keyring_row(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    node.keyring.revoke("ravi", "laptop stolen", by=node.keyring.signer("olga"), ledger=node.ledger)
    with node.db.transaction() as tx:
        tx.execute("UPDATE keys SET revoked_at = NULL WHERE name = 'ravi'")
    assert "approval by ravi does not count: key revoked on" in refused(node, digest)


def test_revoked_key_cannot_be_imported_again_under_a_new_name(node: Node) -> None:
    export = json.loads(node.keyring.export("ravi"))
    node.keyring.revoke("ravi", "gone", by=node.keyring.signer("olga"), ledger=node.ledger)
    with pytest.raises(TrustError, match="revoked"):
        node.keyring.import_public(export, node.ledger, as_name="ravi-new")


def test_expired_approval_does_not_count(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita",))
    past = datetime.now(UTC) - timedelta(days=10)
    forge_approval(node, digest, signer_name="ravi", time=past, expires=past + timedelta(days=1))
    message = refused(node, digest)
    assert "approval by ravi expired on" in message and "opal algo approve" in message


def test_approval_older_than_the_policy_lifetime_is_expired_whatever_it_claims(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita",))
    past = datetime.now(UTC) - timedelta(days=100)
    forge_approval(node, digest, signer_name="ravi", time=past, expires=past + timedelta(days=3650))
    assert "approval by ravi expired on" in refused(node, digest)


def test_approval_longer_than_the_policy_lifetime_is_refused(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path)
    with pytest.raises(BadInputError, match="longer than"):
        approve(node, digest, signer=node.keyring.signer("rita"), expires="365d")


def test_a_later_rejection_withdraws_the_approval(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    approve(node, digest, signer=node.keyring.signer("ravi"), verdict="reject")
    assert "ravi rejected it" in refused(node, digest)


# 7. trust policy: roles in a signed policy override the keyring (threshold/jump tests: test_trust_policy_rotation.py)
def test_only_the_policy_reviewers_count_not_keyring_labels(tmp_path: Path) -> None:
    node = make_node(tmp_path, policy=False)
    init_policy(node, signers=[node.keyring.signer("b1")], board=["b1"], threshold=1, reviewer=["rita", "ravi"], approvals=2)
    digest = submitted(node, tmp_path, approvers=("rita",))
    forge_approval(node, digest, signer_name="rex")  # a reviewer in the keyring, not in the policy
    message = refused(node, digest)
    assert "approval by rex does not count: no board-signed role names that key" in message
    approve(node, digest, signer=node.keyring.signer("ravi"))
    verify_for_run(node, digest)


# 8. rollback
def test_rollback_to_an_older_approved_version_is_refused(node: Node, tmp_path: Path) -> None:
    old = submitted(node, tmp_path, "1.0.0", approvers=("rita", "ravi"))
    verify_for_run(node, old)
    new = submitted(node, tmp_path, "1.1.0", approvers=("rita", "ravi"), comment="v1.1")
    verify_for_run(node, new)
    message = refused(node, old)
    assert "population_density@1.0.0 is older than fully approved population_density@1.1.0; rollback refused" in message


def test_deleting_the_newer_versions_row_does_not_allow_a_rollback(node: Node, tmp_path: Path) -> None:
    """The operator deletes 1.1.0 from the bundles table (and its approvals rows): the signed
    bundle_submitted and approval entries still name it, so 1.0.0 stays refused."""
    old = submitted(node, tmp_path, "1.0.0", approvers=("rita", "ravi"))
    new = submitted(node, tmp_path, "1.1.0", approvers=("rita", "ravi"), comment="v1.1")
    with node.db.transaction() as tx:
        tx.execute("DELETE FROM bundles WHERE digest = ?", (new,))
        tx.execute("DELETE FROM approvals WHERE digest = ?", (new,))
    message = refused(node, old)
    assert "population_density@1.0.0 is older than fully approved population_density@1.1.0; rollback refused" in message


def test_a_partly_approved_newer_version_does_not_block_the_older(node: Node, tmp_path: Path) -> None:
    old = submitted(node, tmp_path, "1.0.0", approvers=("rita", "ravi"))
    submitted(node, tmp_path, "1.1.0", approvers=("rita",), comment="v1.1")
    verify_for_run(node, old)


def test_board_pin_allows_the_older_version(node: Node, tmp_path: Path) -> None:
    old = submitted(node, tmp_path, "1.0.0", approvers=("rita", "ravi"))
    submitted(node, tmp_path, "1.1.0", approvers=("rita", "ravi"), comment="v1.1")
    with pytest.raises(TrustError, match="not a board key"):
        pin_version(node, "population_density", "1.0.0", signer=node.keyring.signer("olga"))
    pin_version(node, "population_density", "1.0.0", signer=node.keyring.signer("b1"), reason="1.1 miscounts")
    verify_for_run(node, old)


def test_forged_pin_is_ignored(node: Node, tmp_path: Path) -> None:
    old = submitted(node, tmp_path, "1.0.0", approvers=("rita", "ravi"))
    submitted(node, tmp_path, "1.1.0", approvers=("rita", "ravi"), comment="v1.1")
    pin_version(node, "population_density", "1.1.0", signer=node.keyring.signer("b1"))
    with node.db.transaction() as tx:  # the pins table is a copy: editing it moves nothing
        tx.execute("UPDATE bundle_pins SET version = '1.0.0'")
    assert "rollback refused" in refused(node, old)


def test_revoking_the_newer_version_allows_the_older(node: Node, tmp_path: Path) -> None:
    old = submitted(node, tmp_path, "1.0.0", approvers=("rita", "ravi"))
    new = submitted(node, tmp_path, "1.1.0", approvers=("rita", "ravi"), comment="v1.1")
    revoke_bundle(node, new, reason="miscounts", signer=node.keyring.signer("b1"))
    verify_for_run(node, old)


# 9. a revoked bundle
def test_revoked_bundle_is_refused(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    verify_for_run(node, digest)
    with pytest.raises(TrustError, match="not a board key"):
        revoke_bundle(node, digest, reason="leaks", signer=node.keyring.signer("olga"))
    revoke_bundle(node, digest, reason="leaks small cells", signer=node.keyring.signer("b1"))
    assert "was revoked on" in refused(node, digest) and "leaks small cells" in refused(node, digest)
    assert node.ledger.entries(type="bundle_revoked")[-1].body["reason"] == "leaks small cells"


def test_bundle_revocation_in_the_ledger_survives_a_cleared_row(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    revoke_bundle(node, digest, reason="leaks", signer=node.keyring.signer("b1"))
    with node.db.transaction() as tx:
        tx.execute("UPDATE bundles SET revoked_at = NULL, revoke_reason = NULL")
    assert "was revoked on" in refused(node, digest)


# 10. signatures in the node's tables decide nothing: the signed ledger entries do
def test_author_signature_edited_in_the_bundles_table_changes_nothing(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    with node.db.transaction() as tx:
        tx.execute("UPDATE bundles SET signature = ?, author = ? WHERE digest = ?",
                   (forged_signature(), node.keyring.get("olga").key_id, digest))
    verify_for_run(node, digest)


def test_forged_approval_signature_in_the_ledger_does_not_count(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita",))
    entry = node.ledger.entries(type="bundle_approved")[-1]
    node.ledger.append(
        type="bundle_approved",
        body={**entry.body, "signature": forged_signature()},
        signer=node.keyring.signer("ravi"),
        subject=entry.subject,
    )
    message = refused(node, digest)
    assert "1 valid approval(s)" in message and "approval by ravi does not count: bundle-approval signature" in message


def test_bundle_row_relabelled_to_another_version_is_refused(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    with node.db.transaction() as tx:
        tx.execute("UPDATE bundles SET version = '9.0.0' WHERE digest = ?", (digest,))
    assert "declares population_density@1.0.0 but was submitted as population_density@9.0.0" in refused(node, digest)


def test_keyring_row_edited_to_another_public_key_changes_nothing(node: Node, tmp_path: Path) -> None:
    digest = submitted(node, tmp_path, approvers=("rita", "ravi"))
    olga = node.keyring.get("olga")
    with node.db.transaction() as tx:
        tx.execute("UPDATE keys SET public_key = ? WHERE name = 'sam'", (olga.public_key,))
    verify_for_run(node, digest)  # public keys come from the board-signed policy


def test_unknown_digest_is_refused(node: Node) -> None:
    assert "never submitted" in refused(node, "0" * 64)
