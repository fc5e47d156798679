"""The trust policy: which keys hold which role, how many approvals a bundle needs.

A signed policy is a TUF-root-like document::

    {"signed": {"_type": "opal/trust-policy", "version": N, "keys": {...},
                "roles": {"board": {"keyids": [...], "threshold": K},
                          "reviewer": {"keyids": [...], "threshold": k},
                          "statistician": {"keyids": [...]},
                          "operator": {"keyids": [...]},      # the node's log keys
                          "witness": {"keyids": [...], "threshold": w}},
                "approval_lifetime_days": D, "author_may_approve": false},
     "signatures": [{"keyid": ..., "sig": ...}]}

Version 1 must carry a threshold of its own board's signatures; version N+1
a threshold of version N's board *and* of its own (TUF spec §5.3.4–5.3.5).
Roles come from here only. While no signed policy is installed nobody holds
any role (the built-in default fails closed): nothing can be submitted,
approved or run until a board installs one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from opal.canonical import canonical_json, sha256_hex
from opal.errors import BadInputError, TrustError
from opal.trust.keys import ROLES, check_public_key, key_id_of, verify_signature

__all__ = [
    "TrustPolicy",
    "POLICY_DOMAIN",
    "POLICY_TYPE",
    "check_policy_body",
    "verify_policy_signatures",
    "verify_rotation",
]

POLICY_DOMAIN = "trust-policy"
POLICY_TYPE = "opal/trust-policy"


@dataclass(frozen=True, kw_only=True)
class TrustPolicy:
    """The policy in force. ``version == 0`` is the built-in default (unsigned)."""

    version: int = 0
    threshold: int = 2                  # k of n reviewers
    approval_lifetime_days: int = 90
    author_may_approve: bool = False
    board_threshold: int = 1
    witness_threshold: int = 0
    # role -> key ids; None for the built-in default, under which nobody holds a role
    roles: Mapping[str, frozenset[str]] | None = None
    keys: Mapping[str, str] = field(default_factory=dict)   # key id -> public key hex
    names: Mapping[str, str] = field(default_factory=dict)  # key id -> name, for messages
    digest: str | None = None

    def __post_init__(self) -> None:
        # An empty approval requirement fails closed: zero approvals is never enough.
        if self.threshold < 1:
            raise BadInputError(f"trust policy threshold must be >= 1, found {self.threshold}")
        if self.approval_lifetime_days < 1:
            raise BadInputError("approval_lifetime_days must be >= 1")

    @property
    def signed(self) -> bool:
        return self.roles is not None

    @property
    def label(self) -> str:
        return f"trust policy v{self.version}" if self.signed else "built-in default trust policy (no board)"

    def role_keys(self, role: str) -> frozenset[str]:
        """Key ids the policy names for ``role``; empty (fail closed) when it names none."""
        if self.roles is None:
            return frozenset()
        return self.roles.get(role, frozenset())

    def roles_of(self, key_id: str) -> frozenset[str]:
        if self.roles is None:
            return frozenset()
        return frozenset(role for role, ids in self.roles.items() if key_id in ids)

    @classmethod
    def from_signed(cls, signed: Mapping[str, Any]) -> TrustPolicy:
        """The in-force view of a checked policy body (see ``check_policy_body``)."""
        check_policy_body(signed)
        roles = signed["roles"]
        return cls(
            version=int(signed["version"]),
            threshold=int(roles["reviewer"]["threshold"]),
            approval_lifetime_days=int(signed["approval_lifetime_days"]),
            author_may_approve=bool(signed["author_may_approve"]),
            board_threshold=int(roles["board"]["threshold"]),
            witness_threshold=int(roles.get("witness", {}).get("threshold", 0)),
            roles=MappingProxyType({r: frozenset(v["keyids"]) for r, v in roles.items()}),
            keys=MappingProxyType({k: v["public_key"] for k, v in signed["keys"].items()}),
            names=MappingProxyType({k: v.get("name", k[:12]) for k, v in signed["keys"].items()}),
            digest=sha256_hex(canonical_json(dict(signed))),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "signed": self.signed,
            "digest": self.digest,
            "approval_threshold": self.threshold,
            "approval_lifetime_days": self.approval_lifetime_days,
            "author_may_approve": self.author_may_approve,
            "board_threshold": self.board_threshold if self.signed else None,
            "witness_threshold": self.witness_threshold if self.signed else None,
            "roles": (
                {r: sorted(self.names.get(k, k[:12]) for k in ids) for r, ids in self.roles.items()}
                if self.roles is not None
                else "none (no board-signed policy installed)"
            ),
        }

    @classmethod
    def load(cls, path: Path) -> TrustPolicy:
        """The policy in ``path`` after checking its own board signatures; the default if absent.

        This does not check the version chain; ``opal.trust.governance.policy_in_force``
        does, and is what the worker uses.
        """
        if not path.exists():
            return cls()
        try:
            envelope = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TrustError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(envelope, dict) or "signed" not in envelope:
            # fail closed: an unsigned policy file must not silently weaken or replace the default
            raise TrustError(f"{path} is not a signed trust policy; create one with opal trust init")
        policy = cls.from_signed(envelope["signed"])
        verify_policy_signatures(envelope, policy, what=f"trust policy v{policy.version}")
        return policy


def _fail(message: str) -> TrustError:
    return TrustError(f"trust policy is malformed: {message}")


def check_policy_body(signed: Mapping[str, Any]) -> None:
    """Raise TrustError unless ``signed`` is a well-formed policy body."""
    known = {"_type", "version", "created", "keys", "roles", "approval_lifetime_days", "author_may_approve"}
    if not isinstance(signed, Mapping):
        raise _fail("'signed' must be an object")
    unknown = sorted(set(signed) - known)
    if unknown:
        raise _fail(f"unknown field(s) {', '.join(unknown)}")
    if signed.get("_type") != POLICY_TYPE:
        raise _fail(f"_type must be {POLICY_TYPE!r}, found {signed.get('_type')!r}")
    version = signed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(f"version must be an integer >= 1, found {version!r}")
    lifetime = signed.get("approval_lifetime_days")
    if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime < 1:
        raise _fail(f"approval_lifetime_days must be an integer >= 1, found {lifetime!r}")
    if not isinstance(signed.get("author_may_approve"), bool):
        raise _fail("author_may_approve must be true or false")
    keys = signed.get("keys")
    if not isinstance(keys, Mapping):
        raise _fail("keys must be an object of key id -> {public_key, name}")
    for key_id, info in keys.items():
        try:
            raw = bytes.fromhex(str(info["public_key"]))
        except (KeyError, TypeError, ValueError):
            raise _fail(f"key {key_id[:12]} has no hex public_key") from None
        if len(raw) != 32 or key_id_of(raw) != key_id:
            raise _fail(f"key id {key_id[:12]} is not the SHA-256 of its public key")
        try:
            check_public_key(raw, what=f"key {key_id[:12]}")
        except TrustError as exc:
            raise _fail(exc.message) from None
    roles = signed.get("roles")
    if not isinstance(roles, Mapping):
        raise _fail("roles must be an object")
    for role, spec in roles.items():
        if role not in ROLES:
            raise _fail(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("keyids"), list):
            raise _fail(f"role {role} needs a keyids list")
        for key_id in spec["keyids"]:
            if key_id not in keys:
                raise _fail(f"role {role} names key {str(key_id)[:12]} that is not in keys")
        if len(set(spec["keyids"])) != len(spec["keyids"]):
            raise _fail(f"role {role} lists a key twice")
    # Empty board or reviewer sets fail closed: nobody could ever approve or rotate.
    for role in ("board", "reviewer", "witness"):
        spec = roles.get(role)
        if role == "witness" and (spec is None or not spec["keyids"]):
            if spec is not None and spec.get("threshold", 0) != 0:
                raise _fail("witness threshold must be 0 when the policy names no witness")
            continue
        if spec is None or not spec["keyids"]:
            raise _fail(f"role {role} needs at least one key")
        threshold = spec.get("threshold")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= len(spec["keyids"]):
            raise _fail(
                f"{role} threshold must be between 1 and {len(spec['keyids'])} (its number of keys), "
                f"found {threshold!r}"
            )


def verify_policy_signatures(envelope: Mapping[str, Any], trusted: TrustPolicy, *, what: str) -> None:
    """Raise TrustError unless a threshold of ``trusted``'s board keys signed ``envelope['signed']``.

    Signatures are counted by distinct key id; a key outside the board, a bad or
    duplicate signature adds nothing.
    """
    board = trusted.role_keys("board")
    message = canonical_json(dict(envelope["signed"]))
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list):
        raise TrustError(f"{what} has no signatures list")
    good: set[str] = set()
    for sig in signatures:
        if not isinstance(sig, Mapping):
            continue
        key_id = str(sig.get("keyid", ""))
        if key_id not in board or key_id in good:
            continue
        try:
            verify_signature(trusted.keys[key_id], POLICY_DOMAIN, message, str(sig.get("sig", "")))
        except TrustError:
            continue
        good.add(key_id)
    if len(good) < trusted.board_threshold:
        source = f"trust policy v{trusted.version}"
        raise TrustError(
            f"{what} has {len(good)} valid board signature(s) from {source}, needs {trusted.board_threshold}; "
            "collect more with opal trust sign FILE --key BOARDKEY"
        )


def verify_rotation(previous: TrustPolicy | None, envelope: Mapping[str, Any]) -> TrustPolicy:
    """Check a new policy version against the one in force; return its in-force view.

    TUF §5.3.4–5.3.5: version N+1 exactly, signed by a threshold of the old
    board and of the new one. Version 1 is signed by a threshold of its own board.
    """
    if not isinstance(envelope, Mapping) or "signed" not in envelope:
        raise TrustError("not a signed trust policy (expected {\"signed\": ..., \"signatures\": [...]})")
    new = TrustPolicy.from_signed(envelope["signed"])
    expected = (previous.version if previous is not None and previous.signed else 0) + 1
    if new.version != expected:
        raise TrustError(f"new trust policy version {new.version} must be exactly {expected} (previous + 1)")
    what = f"trust policy v{new.version}"
    if previous is not None and previous.signed:
        verify_policy_signatures(envelope, previous, what=what)
    verify_policy_signatures(envelope, new, what=what)
    return new
