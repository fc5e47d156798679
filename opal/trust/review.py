"""Submission, review and the worker's trust check before every run.

An approval is an in-toto-style signed statement over the bundle digest:
subject digest, reviewer key, verdict, time, expiry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from opal.bundle.manifest import version_key
from opal.bundle.registry import Bundle
from opal.canonical import canonical_json
from opal.errors import BadInputError, TrustError
from opal.trust.keys import KeyInfo, utcnow, verify_signature

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.keyring import Signer

__all__ = ["submit", "approve", "verify_for_run", "Approval", "SUBMISSION_DOMAIN", "APPROVAL_DOMAIN"]

SUBMISSION_DOMAIN = "bundle-submission"
APPROVAL_DOMAIN = "bundle-approval"
APPROVAL_TYPE = "https://opal.dev/approval/v1"


def _submission_statement(digest: str, name: str, version: str, author: str) -> bytes:
    return canonical_json({"digest": digest, "name": name, "version": version, "author": author})


def submit(node: Node, bundle: Bundle, *, signer: Signer) -> None:
    """Store the bundle by digest with the author's signature and record it in the ledger."""
    if signer.role != "statistician":
        raise TrustError(f"key {signer.name!r} has role {signer.role!r}; bundles are submitted by a statistician key")
    existing = node.db.one("SELECT digest FROM bundles WHERE digest = ?", (bundle.digest,))
    if existing is not None:
        raise BadInputError(f"bundle {bundle.ref} ({bundle.digest[:12]}) was submitted already")
    m = bundle.manifest
    signature = signer.sign(SUBMISSION_DOMAIN, _submission_statement(bundle.digest, m.name, m.version, signer.key_id))
    node.registry.store(bundle)
    with node.db.transaction() as tx:
        tx.execute(
            "INSERT INTO bundles(digest, name, version, author, signature, submitted) VALUES (?,?,?,?,?,?)",
            (bundle.digest, m.name, m.version, signer.key_id, signature, utcnow()),
        )
        node.ledger.append_in(
            tx,
            type="bundle_submitted",
            body={"digest": bundle.digest, "name": m.name, "version": m.version, "author": signer.key_id, "signature": signature},
            signer=signer,
            subject=m.name,
        )


@dataclass(frozen=True, kw_only=True)
class Approval:
    digest: str
    name: str
    version: str
    reviewer: str
    verdict: str
    time: str
    expires: str
    comment: str

    def statement(self) -> dict[str, Any]:
        return {
            "_type": APPROVAL_TYPE,
            "subject": {"name": f"{self.name}@{self.version}", "digest": {"sha256": self.digest}},
            "reviewer": self.reviewer,
            "verdict": self.verdict,
            "time": self.time,
            "expires": self.expires,
            "comment": self.comment,
        }

    @classmethod
    def from_statement(cls, s: dict[str, Any]) -> Approval:
        try:
            name, _, version = str(s["subject"]["name"]).partition("@")
            return cls(
                digest=str(s["subject"]["digest"]["sha256"]),
                name=name,
                version=version,
                reviewer=str(s["reviewer"]),
                verdict=str(s["verdict"]),
                time=str(s["time"]),
                expires=str(s["expires"]),
                comment=str(s.get("comment", "")),
            )
        except (KeyError, TypeError):
            raise TrustError("approval statement is malformed") from None


def parse_duration(text: str) -> timedelta:
    units = {"d": "days", "h": "hours", "w": "weeks"}
    try:
        return timedelta(**{units[text[-1]]: int(text[:-1])})
    except (KeyError, ValueError, IndexError):
        raise BadInputError(f"duration {text!r} must look like 90d, 12h or 4w") from None


def _bundle_row(node: Node, digest: str) -> Any:
    row = node.db.one("SELECT * FROM bundles WHERE digest = ?", (digest,))
    if row is None:
        raise BadInputError(f"no submitted bundle {digest[:12]}; see opal algo list")
    return row


def approve(
    node: Node,
    digest: str,
    *,
    signer: Signer,
    verdict: str = "approve",
    expires: str | None = None,
    comment: str = "",
) -> Approval:
    row = _bundle_row(node, digest)
    if signer.role != "reviewer":
        raise TrustError(f"key {signer.name!r} has role {signer.role!r}; approvals need a reviewer key")
    policy = node.trust_policy
    lifetime = parse_duration(expires) if expires else timedelta(days=policy.approval_lifetime_days)
    now = datetime.now(timezone.utc)
    approval = Approval(
        digest=digest,
        name=row["name"],
        version=row["version"],
        reviewer=signer.key_id,
        verdict=verdict,
        time=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        expires=(now + lifetime).isoformat(timespec="seconds").replace("+00:00", "Z"),
        comment=comment,
    )
    statement = approval.statement()
    signature = signer.sign(APPROVAL_DOMAIN, canonical_json(statement))
    with node.db.transaction() as tx:
        tx.execute(
            "INSERT INTO approvals(digest, key_id, statement, signature, verdict, time) VALUES (?,?,?,?,?,?)",
            (digest, signer.key_id, json.dumps(statement), signature, verdict, approval.time),
        )
        node.ledger.append_in(
            tx,
            type="bundle_approved" if verdict == "approve" else "bundle_rejected",
            body={"digest": digest, "name": row["name"], "version": row["version"], "statement": statement, "signature": signature},
            signer=signer,
            subject=row["name"],
        )
    return approval


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _key(node: Node, key_id: str) -> KeyInfo | None:
    keys = node.keyring.by_id(key_id)
    return keys[0] if keys else None


def verify_for_run(node: Node, digest: str) -> Bundle:
    """The worker's check before every run (DESIGN.md pipeline step 1–2).

    Loads the bundle's exact bytes, recomputes the digest, checks the author's
    signature and counts valid approvals by distinct key. Returns the bundle
    whose bytes were checked; raises TrustError naming the exact reason.
    """
    row = _bundle_row(node, digest)
    bundle = node.registry.load(digest)
    ref = f"{row['name']}@{row['version']}"
    if row["revoked_at"]:
        raise TrustError(f"bundle {ref} was revoked on {row['revoked_at']} ({row['revoke_reason']}); it may not run")
    author = _key(node, row["author"])
    if author is None:
        raise TrustError(f"author key of {ref} is unknown to this node")
    if author.role != "statistician":
        raise TrustError(f"author key of {ref} has role {author.role!r}, not statistician")
    if author.revoked:
        raise TrustError(f"author key {author.name!r} of {ref} was revoked on {author.revoked_at}")
    verify_signature(
        author.public_key,
        SUBMISSION_DOMAIN,
        _submission_statement(digest, row["name"], row["version"], row["author"]),
        row["signature"],
    )
    policy = node.trust_policy
    now = datetime.now(timezone.utc)
    valid: set[str] = set()
    problems: list[str] = []
    for a in node.db.query("SELECT * FROM approvals WHERE digest = ? ORDER BY time", (digest,)):
        key = _key(node, a["key_id"])
        label = key.name if key else a["key_id"][:12]
        try:
            statement = json.loads(a["statement"])
            verify_signature(key.public_key if key else "", APPROVAL_DOMAIN, canonical_json(statement), a["signature"]) if key else None
            if key is None:
                raise TrustError(f"approval by unknown key {label}")
            approval = Approval.from_statement(statement)
            if approval.digest != digest:
                raise TrustError(f"approval by {label} is for bundle {approval.digest[:12]}, not {digest[:12]}")
            if approval.reviewer != key.key_id:
                raise TrustError(f"approval by {label} names another reviewer")
            if approval.verdict != "approve":
                continue
            if key.role != "reviewer":
                raise TrustError(f"approval by {label} does not count: role {key.role!r} is not reviewer")
            if key.revoked:
                raise TrustError(f"approval by {label} does not count: key revoked on {key.revoked_at}")
            if not policy.author_may_approve and key.key_id == row["author"]:
                raise TrustError(f"approval by {label} does not count: authors may not approve their own bundle")
            if _parse_time(approval.expires) <= now:
                raise TrustError(
                    f"approval by {label} expired on {approval.expires}; ask for a new approval (opal algo approve)"
                )
        except TrustError as exc:
            problems.append(exc.message)
            continue
        valid.add(key.key_id)  # distinct key fingerprints: the same key twice counts once
    if len(valid) < policy.threshold:
        detail = f"; {problems[0]}" if problems else ""
        raise TrustError(
            f"bundle {ref} has {len(valid)} valid approval(s), the trust policy needs {policy.threshold}{detail}"
        )
    # Rollback protection: a lower version than the highest approved one of the same name.
    for other in node.db.query(
        "SELECT DISTINCT b.version FROM bundles b JOIN approvals a ON a.digest = b.digest "
        "WHERE b.name = ? AND a.verdict = 'approve' AND b.revoked_at IS NULL",
        (row["name"],),
    ):
        if version_key(other["version"]) > version_key(row["version"]):
            raise TrustError(
                f"{ref} is older than approved {row['name']}@{other['version']}; rollback refused"
            )
    return bundle
