"""Installing and rotating the board-signed trust policy on a node.

Bootstrap (fails closed, simple path still works):

* No policy installed and none ever recorded in the ledger: the built-in
  default applies (2 reviewer approvals, roles from the keyring, no board).
* ``opal trust init --board B... --threshold K --reviewer R...`` writes
  version 1, signed by a threshold of its own board keys.
* Every later version goes through ``install``: exactly previous + 1, signed
  by a threshold of the old board and of the new one (TUF §5.3.4–5.3.5).
* Every installed version is stored in the node database, copied to
  ``OPAL_HOME/governance/`` and recorded as a ``trust_policy`` ledger entry.
  The node re-checks the whole chain each time it reads the policy, and a
  ledger entry for a version the store no longer holds is an error, not a
  quiet fall-back to an older or default policy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opal.canonical import canonical_json, sha256_hex
from opal.errors import BadInputError, TrustError
from opal.trust._tables import ensure_trust_tables
from opal.trust.keys import utcnow
from opal.trust.policy import POLICY_DOMAIN, POLICY_TYPE, TrustPolicy, verify_rotation

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.keyring import Signer

__all__ = [
    "policy_in_force",
    "policy_history",
    "draft_policy",
    "sign_policy",
    "install_policy",
    "init_policy",
    "read_policy_spec",
    "POLICY_FILE",
]

POLICY_FILE = "trust_policy.json"
_HISTORY_DIR = "trust_policy.history"


def _ledger_max_version(node: Node) -> int:
    versions = [int(e.body.get("version", 0)) for e in node.ledger.entries(type="trust_policy")]
    return max(versions, default=0)


def policy_in_force(node: Node) -> TrustPolicy:
    """The trust policy this node must apply now, after re-checking every version's signatures.

    Raises TrustError if the stored chain is broken or shorter than the ledger says.
    """
    ensure_trust_tables(node.db)
    rows = node.db.query("SELECT version, document FROM trust_policies ORDER BY version")
    recorded = _ledger_max_version(node)
    if not rows:
        if recorded:
            raise TrustError(
                f"the ledger records trust policy v{recorded} but this node holds none; "
                "reinstall the policy files with opal trust apply FILE"
            )
        if (node.home.governance_dir / POLICY_FILE).exists():
            # fail closed: a policy file nobody installed must not be ignored silently
            raise TrustError(
                f"{node.home.governance_dir / POLICY_FILE} exists but was never installed; "
                "install it with opal trust apply FILE or remove it"
            )
        return TrustPolicy()
    policy: TrustPolicy | None = None
    for row in rows:
        try:
            envelope = json.loads(row["document"])
        except json.JSONDecodeError:
            raise TrustError(f"stored trust policy v{row['version']} is not valid JSON") from None
        policy = verify_rotation(policy, envelope)
    assert policy is not None
    if policy.version < recorded:
        raise TrustError(
            f"trust policy v{policy.version} is installed but the ledger records v{recorded}; "
            "a newer policy was removed (rollback); reinstall it with opal trust apply FILE"
        )
    return policy


def policy_history(node: Node) -> list[dict[str, Any]]:
    ensure_trust_tables(node.db)
    return [
        {
            "version": r["version"],
            "digest": r["digest"],
            "installed": r["installed"],
            "policy": json.loads(r["document"]),
        }
        for r in node.db.query("SELECT * FROM trust_policies ORDER BY version")
    ]


def read_policy_spec(path: Path) -> dict[str, Any]:
    """A policy spec by key *names* (``governance/trust_policy.template.json``)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not a readable JSON trust policy spec ({exc})") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: a trust policy spec is a JSON object")
    data.pop("_comment", None)
    return data


def _spec_of(policy: TrustPolicy) -> dict[str, Any]:
    assert policy.roles is not None
    spec: dict[str, Any] = {
        role: sorted(policy.names.get(k, k) for k in ids) for role, ids in policy.roles.items()
    }
    spec["threshold"] = policy.board_threshold
    spec["approvals"] = policy.threshold
    spec["approval_lifetime_days"] = policy.approval_lifetime_days
    spec["author_may_approve"] = policy.author_may_approve
    return spec


def draft_policy(
    node: Node,
    *,
    board: Sequence[str] | None = None,
    threshold: int | None = None,
    reviewer: Sequence[str] | None = None,
    approvals: int | None = None,
    statistician: Sequence[str] | None = None,
    operator: Sequence[str] | None = None,
    approval_lifetime_days: int | None = None,
    author_may_approve: bool | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An unsigned envelope for the next policy version.

    Fields not given are taken from ``base`` (a spec file), then from the policy
    in force. Keys are named as in the keyring and must hold that role there.
    """
    current = policy_in_force(node)
    spec: dict[str, Any] = (
        _spec_of(current)
        if current.signed
        else {
            "approvals": current.threshold,
            "approval_lifetime_days": current.approval_lifetime_days,
            "author_may_approve": current.author_may_approve,
        }
    )
    spec.update(base or {})
    given = {
        "board": board, "threshold": threshold, "reviewer": reviewer, "approvals": approvals,
        "statistician": statistician, "operator": operator,
        "approval_lifetime_days": approval_lifetime_days, "author_may_approve": author_may_approve,
    }
    spec.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in given.items() if v is not None})
    unknown = sorted(set(spec) - set(given))
    if unknown:
        raise BadInputError(f"unknown trust policy spec field(s): {', '.join(unknown)}")
    for needed in ("board", "reviewer"):
        if not spec.get(needed):
            raise BadInputError(f"the trust policy needs at least one {needed} key (--{needed} NAME)")
    keys: dict[str, dict[str, str]] = {}
    roles: dict[str, dict[str, Any]] = {}
    for role in ("board", "reviewer", "statistician", "operator"):
        names = spec.get(role)
        if names is None:
            continue  # role left open: keyring roles apply to it
        ids: list[str] = []
        for name in names:
            info = node.keyring.get(str(name))
            if info.revoked:
                raise BadInputError(f"key {name!r} was revoked on {info.revoked_at}; it cannot hold a role")
            if info.role != role:
                raise BadInputError(f"key {name!r} has role {info.role!r} in the keyring; a {role} key is needed")
            if info.key_id in ids:
                raise BadInputError(f"key {name!r} is listed twice for {role} (same key id under two names)")
            keys[info.key_id] = {"name": info.name, "public_key": info.public_key}
            ids.append(info.key_id)
        roles[role] = {"keyids": sorted(ids)}
    board_n = len(roles["board"]["keyids"])
    roles["board"]["threshold"] = _int(spec.get("threshold"), board_n // 2 + 1, "threshold")
    roles["reviewer"]["threshold"] = _int(spec.get("approvals"), 2, "approvals")
    signed = {
        "_type": POLICY_TYPE,
        "version": (current.version if current.signed else 0) + 1,
        "created": utcnow(),
        "keys": keys,
        "roles": roles,
        "approval_lifetime_days": _int(spec.get("approval_lifetime_days"), 90, "approval_lifetime_days"),
        "author_may_approve": bool(spec.get("author_may_approve", False)),
    }
    try:
        TrustPolicy.from_signed(signed)  # thresholds out of range, empty roles
    except TrustError as exc:
        raise BadInputError(exc.message) from None
    return {"signed": signed, "signatures": []}


def _int(value: Any, default: int, what: str) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadInputError(f"{what} must be an integer, found {value!r}") from None


def sign_policy(envelope: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """Add ``signer``'s signature (replacing an earlier one by the same key)."""
    if signer.role != "board":
        raise TrustError(f"key {signer.name!r} has role {signer.role!r}; trust policies are signed by board keys")
    if not isinstance(envelope, dict) or "signed" not in envelope:
        raise BadInputError("not a trust policy envelope ({\"signed\": ..., \"signatures\": [...]})")
    sig = signer.sign(POLICY_DOMAIN, canonical_json(envelope["signed"]))
    others = [s for s in envelope.get("signatures", []) if s.get("keyid") != signer.key_id]
    return {"signed": envelope["signed"], "signatures": [*others, {"keyid": signer.key_id, "sig": sig}]}


def _write_files(node: Node, policy: TrustPolicy, document: str) -> None:
    gov = node.home.governance_dir
    history = gov / _HISTORY_DIR
    history.mkdir(parents=True, exist_ok=True)
    for target in (history / f"v{policy.version}.json", gov / POLICY_FILE):
        tmp = target.with_suffix(".tmp")
        tmp.write_text(document)
        os.replace(tmp, target)


def install_policy(node: Node, envelope: dict[str, Any], *, signer: Signer) -> TrustPolicy:
    """Verify ``envelope`` as the next version and make it the policy in force.

    ``signer`` signs the ``trust_policy`` ledger entry (a board or operator key).
    Raises TrustError on a version jump or too few board signatures.
    """
    ensure_trust_tables(node.db)
    previous = policy_in_force(node)
    policy = verify_rotation(previous, envelope)
    document = json.dumps(envelope, indent=2, sort_keys=True)
    digest = sha256_hex(canonical_json(envelope["signed"]))
    with node.db.transaction() as tx:
        if tx.execute("SELECT 1 FROM trust_policies WHERE version = ?", (policy.version,)).fetchone():
            raise TrustError(f"trust policy v{policy.version} was installed concurrently; retry")
        tx.execute(
            "INSERT INTO trust_policies(version, digest, document, installed) VALUES (?,?,?,?)",
            (policy.version, digest, document, utcnow()),
        )
        node.ledger.append_in(
            tx,
            type="trust_policy",
            body={"version": policy.version, "digest": digest, "previous": previous.version, "policy": envelope},
            signer=signer,
            subject="trust_policy",
        )
    _write_files(node, policy, document)
    return policy


def init_policy(node: Node, *, signers: Sequence[Signer], **spec: Any) -> TrustPolicy:
    """Create, sign and install trust policy version 1 (``opal trust init``)."""
    if policy_in_force(node).signed:
        raise BadInputError("a signed trust policy is installed already; change it with opal trust propose/apply")
    envelope = draft_policy(node, **spec)
    for signer in signers:
        envelope = sign_policy(envelope, signer)
    if not signers:
        raise BadInputError("this node holds none of the board keys; sign with opal trust sign, then opal trust apply")
    return install_policy(node, envelope, signer=signers[0])
