"""Installing and rotating the board-signed trust policy on a node.

Bootstrap (fails closed):

* No policy recorded in the ledger: nobody holds any role; worker runs are
  refused (``require_board_policy``).
* ``opal trust init --board B... --threshold K --reviewer R...`` writes
  version 1, signed by a threshold of its own board keys.
* Every later version goes through ``install``: exactly previous + 1, signed
  by a threshold of the old board and of the new one (TUF §5.3.4–5.3.5).
* Every installed version is recorded as a ``trust_policy`` ledger entry that
  carries the whole signed document; that signed entry is the authority. The
  ``trust_policies`` table and ``OPAL_HOME/governance/`` hold copies for
  reading. The node re-checks the whole chain each time it reads the policy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opal.canonical import canonical_json, sha256_hex
from opal.errors import BadInputError, TrustError
from opal.ledger.records import ENTRY_DOMAIN
from opal.trust._tables import ensure_trust_tables
from opal.trust.keys import utcnow, verify_signature
from opal.trust.policy import POLICY_DOMAIN, POLICY_TYPE, TrustPolicy, verify_rotation

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.keyring import Signer

__all__ = [
    "policy_in_force",
    "require_board_policy",
    "granted_roles",
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


def policy_in_force(node: Node) -> TrustPolicy:
    """The trust policy this node must apply now: the chain of ``trust_policy``
    ledger entries (their signed bodies), every version's board signatures re-checked.

    Without one, the built-in default, under which nobody holds any role.
    Raises TrustError if the recorded chain is broken.
    """
    policy: TrustPolicy | None = None
    for entry in node.ledger.entries(type="trust_policy"):
        try:
            policy = verify_rotation(policy, entry.body["policy"])
        except (KeyError, TypeError):
            raise TrustError(
                f"ledger entry {entry.index} (trust_policy) carries no policy; run opal ledger verify"
            ) from None
        except TrustError as exc:
            raise TrustError(
                f"ledger entry {entry.index} (trust_policy): {exc.message}; run opal ledger verify"
            ) from None
    if policy is None:
        if (node.home.governance_dir / POLICY_FILE).exists():
            # fail closed: a policy file nobody installed must not be ignored silently
            raise TrustError(
                f"{node.home.governance_dir / POLICY_FILE} exists but was never installed; "
                "install it with opal trust apply FILE or remove it"
            )
        return TrustPolicy()
    return policy


def require_board_policy(node: Node) -> TrustPolicy:
    """The board-signed policy in force; raise TrustError (exit 6) if the node has none.

    A node must not run anything on real data unless a board, not the operator
    alone, decided who may approve and run.
    """
    policy = policy_in_force(node)
    if not policy.signed:
        raise TrustError(
            "no board-signed trust policy is installed on this node; the board installs one with "
            "opal trust init --board KEY (or opal trust apply FILE)"
        )
    return policy


def granted_roles(node: Node, policy: TrustPolicy) -> dict[str, tuple[str, set[str]]]:
    """Keys a board key of ``policy`` added to the ledger (``key_added`` signed by it), not revoked:
    key id -> (public key hex, roles)."""
    board = policy.role_keys("board")
    found: dict[str, tuple[str, set[str]]] = {}
    for entry in node.ledger.entries(type="key_added"):
        body = entry.body
        key_id = str(body.get("key_id"))
        if entry.actor not in board or entry.actor == key_id:
            continue  # only the board vouches; a key never vouches for itself
        try:  # a row the operator wrote with a board key's id but no board signature grants nothing
            verify_signature(policy.keys[entry.actor], ENTRY_DOMAIN, entry.signed_part(), entry.signature)
        except TrustError:
            continue
        public, roles = found.get(key_id, (str(body.get("public_key")), set()))
        roles.add(str(body.get("role")))
        found[key_id] = (public, roles)
    revoked = {str(e.body.get("key_id")) for e in node.ledger.entries(type="key_revoked")}
    return {k: v for k, v in found.items() if k not in revoked}


def policy_history(node: Node) -> list[dict[str, Any]]:
    return [
        {
            "version": e.body.get("version"),
            "digest": e.body.get("digest"),
            "installed": e.time,
            "index": e.index,
            "policy": e.body.get("policy"),
        }
        for e in node.ledger.entries(type="trust_policy")
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
    spec["witnesses"] = policy.witness_threshold
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
    witness: Sequence[str] | None = None,
    witnesses: int | None = None,
    approval_lifetime_days: int | None = None,
    author_may_approve: bool | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An unsigned envelope for the next policy version.

    Fields not given are taken from ``base`` (a spec file), then from the policy
    in force; a role still not given lists the keyring's unrevoked keys labelled
    with it (the board sees and signs the result). Keys are named as in the
    keyring and must be labelled with that role there.
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
        "statistician": statistician, "operator": operator, "witness": witness, "witnesses": witnesses,
        "approval_lifetime_days": approval_lifetime_days, "author_may_approve": author_may_approve,
    }
    spec.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in given.items() if v is not None})
    unknown = sorted(set(spec) - set(given))
    if unknown:
        raise BadInputError(f"unknown trust policy spec field(s): {', '.join(unknown)}")
    for role in ("board", "reviewer", "statistician", "operator", "witness"):
        if spec.get(role) is None:
            spec[role] = [
                k.name for k in node.keyring.all() if k.role == role and not node.keyring.revoked_at(k.key_id)
            ]
    for needed in ("board", "reviewer"):
        if not spec.get(needed):
            raise BadInputError(f"the trust policy needs at least one {needed} key (--{needed} NAME)")
    keys: dict[str, dict[str, str]] = {}
    roles: dict[str, dict[str, Any]] = {}
    for role in ("board", "reviewer", "statistician", "operator", "witness"):
        names = spec.get(role) or []
        ids: list[str] = []
        for name in names:
            info = node.keyring.get(str(name))
            revoked = node.keyring.revoked_at(info.key_id)
            if revoked:
                raise BadInputError(f"key {name!r} was revoked on {revoked}; it cannot hold a role")
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
    roles["witness"]["threshold"] = _int(spec.get("witnesses"), 1 if roles["witness"]["keyids"] else 0, "witnesses")
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
    recorders = policy.role_keys("board") | policy.role_keys("operator")
    recorders |= previous.role_keys("board") | previous.role_keys("operator")
    if signer.key_id not in recorders:
        raise TrustError(
            f"key {signer.name!r} is neither a board nor an operator key of trust policy v{policy.version} "
            "or the one before; record the policy with one of those keys (--key NAME)"
        )
    document = json.dumps(envelope, indent=2, sort_keys=True)
    digest = sha256_hex(canonical_json(envelope["signed"]))
    with node.db.transaction() as tx:
        tx.execute("DELETE FROM trust_policies WHERE version = ?", (policy.version,))
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
