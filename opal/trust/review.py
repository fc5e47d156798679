"""Submission, review, revocation and the worker's trust check before every run.

An approval is an in-toto-style signed statement over the bundle digest:
subject (name@version, sha256 digest), reviewer key, verdict, time, expiry.
Approvals count by distinct key id, only from keys holding the reviewer role
in the board-signed trust policy in force (``opal.trust.governance``), and
only from the signed ledger entries: the ``approvals``, ``bundles`` and
``bundle_pins`` tables are copies for listing, never read to decide.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from opal.bundle.manifest import version_key
from opal.bundle.registry import Bundle
from opal.canonical import canonical_json
from opal.errors import BadInputError, TrustError
from opal.trust._tables import ensure_trust_tables
from opal.trust.governance import granted_roles, policy_in_force, require_board_policy
from opal.trust.keys import utcnow, verify_signature
from opal.trust.policy import TrustPolicy

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.keyring import Signer

__all__ = [
    "submit",
    "approve",
    "verify_for_run",
    "revoke_bundle",
    "pin_version",
    "unpin",
    "review_view",
    "diff_summary",
    "approval_status",
    "Approval",
    "key_for_role",
    "SUBMISSION_DOMAIN",
    "APPROVAL_DOMAIN",
    "PIN_DOMAIN",
]

SUBMISSION_DOMAIN = "bundle-submission"
APPROVAL_DOMAIN = "bundle-approval"
PIN_DOMAIN = "bundle-pin"
APPROVAL_TYPE = "https://opal.dev/approval/v1"
PIN_TYPE = "https://opal.dev/pin/v1"
_CLOCK_SKEW = timedelta(minutes=5)


def _submission_statement(digest: str, name: str, version: str, author: str) -> bytes:
    return canonical_json({"digest": digest, "name": name, "version": version, "author": author})


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TrustError(f"time {text!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        raise TrustError(f"time {text!r} has no time zone")
    return moment


# -- who holds which role ----------------------------------------------------


def _holds(node: Node, policy: TrustPolicy, key_id: str, role: str) -> bool:
    """Roles come from the board only: the signed policy, or a board-signed ``key_added``."""
    if key_id in policy.role_keys(role):
        return True
    granted = granted_roles(node, policy).get(key_id)
    return granted is not None and role in granted[1]


def _public_key(node: Node, policy: TrustPolicy, key_id: str) -> str | None:
    if key_id in policy.keys:
        return policy.keys[key_id]
    granted = granted_roles(node, policy).get(key_id)
    return granted[0] if granted is not None else None


def _label(node: Node, policy: TrustPolicy, key_id: str) -> str:
    if key_id in policy.names:
        return policy.names[key_id]
    rows = node.keyring.by_id(key_id)
    return "/".join(r.name for r in rows) if rows else key_id[:12]


def key_for_role(node: Node, key_id: str, role: str, *, what: str) -> str:
    """The public key (hex) of ``key_id`` if the board made it a ``role`` key and it is unrevoked.

    Raises:
        TrustError: no board-signed policy, the key holds no such role, or it was revoked.
    """
    policy = require_board_policy(node)
    label = _label(node, policy, key_id)
    public = _public_key(node, policy, key_id)
    if public is None or not _holds(node, policy, key_id, role):
        raise TrustError(f"{what}: key {label} is not a {role} key in the {policy.label}")
    revoked = node.keyring.revoked_at(key_id, node.ledger)
    if revoked:
        raise TrustError(f"{what}: key {label} was revoked on {revoked}")
    return public


def _require_role(node: Node, policy: TrustPolicy, signer: Signer, role: str, what: str) -> None:
    if not _holds(node, policy, signer.key_id, role):
        raise TrustError(f"key {signer.name!r} is not a {role} key in the {policy.label}; {what} needs one")


# -- submission ----------------------------------------------------------------


def submit(node: Node, bundle: Bundle, *, signer: Signer) -> None:
    """Store the bundle by digest with the author's signature and record it in the ledger."""
    policy = require_board_policy(node)
    _require_role(node, policy, signer, "statistician", "submitting a bundle")
    existing = node.db.one("SELECT digest FROM bundles WHERE digest = ?", (bundle.digest,))
    if existing is not None:
        raise BadInputError(f"bundle {bundle.ref} ({bundle.digest[:12]}) was submitted already")
    m = bundle.manifest
    same = node.db.one("SELECT digest FROM bundles WHERE name = ? AND version = ?", (m.name, m.version))
    if same is not None:
        raise BadInputError(
            f"{bundle.ref} was submitted already with other content ({same['digest'][:12]}); "
            "raise the version in opal.toml"
        )
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
            body={
                "digest": bundle.digest,
                "name": m.name,
                "version": m.version,
                "author": signer.key_id,
                "signature": signature,
            },
            signer=signer,
            subject=m.name,
        )


# -- approvals -------------------------------------------------------------------


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
            if s["_type"] != APPROVAL_TYPE:
                raise TypeError
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

    def to_dict(self) -> dict[str, Any]:
        return self.statement()


def parse_duration(text: str) -> timedelta:
    units = {"d": "days", "h": "hours", "w": "weeks"}
    try:
        value = int(text[:-1])
        if value < 1:
            raise ValueError
        return timedelta(**{units[text[-1]]: value})
    except (KeyError, ValueError, IndexError):
        raise BadInputError(f"duration {text!r} must look like 90d, 12h or 4w") from None


def _bundle_row(node: Node, digest: str) -> Any:
    row = node.db.one("SELECT * FROM bundles WHERE digest = ?", (digest,))
    if row is None:
        raise BadInputError(f"no submitted bundle {digest[:12]}; see opal algo list")
    return row


def _revocation(node: Node, row: Any) -> str | None:
    """Why ``row``'s bundle is revoked, or None, from the signed ``bundle_revoked`` entries
    (the bundles table's revoked_at is a copy: clearing it un-revokes nothing)."""
    for entry in node.ledger.entries(type="bundle_revoked"):
        if entry.body.get("digest") == row["digest"]:
            return f"revoked on {entry.time} ({entry.body.get('reason')})"
    return None


def _submission(node: Node, row: Any) -> Any:
    """The signed ``bundle_submitted`` entry of ``row``'s bundle, or None."""
    for entry in node.ledger.entries(type="bundle_submitted"):
        if entry.body.get("digest") == row["digest"]:
            return entry
    return None


def _other_versions(node: Node, name: str, digest: str) -> list[dict[str, str]]:
    """Every other submitted version of ``name``, from the signed ``bundle_submitted`` entries
    (not the bundles table: deleting the newer version's row there must not allow a rollback)."""
    found: dict[str, dict[str, str]] = {}
    for entry in node.ledger.entries(type="bundle_submitted"):
        body = entry.body
        if body.get("name") == name and body.get("digest") != digest and isinstance(body.get("version"), str):
            other = str(body.get("digest"))
            found.setdefault(other, {"digest": other, "name": name, "version": str(body.get("version"))})
    return list(found.values())


def approve(
    node: Node,
    digest: str,
    *,
    signer: Signer,
    verdict: str = "approve",
    expires: str | None = None,
    comment: str = "",
) -> Approval:
    """Sign and record a verdict (approve/reject) on bundle ``digest``."""
    if verdict not in ("approve", "reject"):
        raise BadInputError(f"verdict must be approve or reject, found {verdict!r}")
    row = _bundle_row(node, digest)
    node.registry.load(digest)  # a reviewer signs only bytes that still hash to the digest
    policy = require_board_policy(node)
    _require_role(node, policy, signer, "reviewer", "approving a bundle")
    if signer.key_id == row["author"] and not policy.author_may_approve:
        raise TrustError(
            f"key {signer.name!r} wrote {row['name']}@{row['version']}; authors may not approve their own bundle"
        )
    revoked = _revocation(node, row)
    if revoked:
        raise BadInputError(f"{row['name']}@{row['version']} was {revoked}; it cannot be approved")
    limit = timedelta(days=policy.approval_lifetime_days)
    lifetime = parse_duration(expires) if expires else limit
    if lifetime > limit:
        raise BadInputError(
            f"--expires {expires} is longer than the {policy.label}'s approval lifetime of "
            f"{policy.approval_lifetime_days} days"
        )
    now = datetime.now(UTC)
    approval = Approval(
        digest=digest,
        name=row["name"],
        version=row["version"],
        reviewer=signer.key_id,
        verdict=verdict,
        time=_iso(now),
        expires=_iso(now + lifetime),
        comment=comment,
    )
    record_verdict(node, approval, signer=signer)
    return approval


def record_verdict(node: Node, approval: Approval, *, signer: Signer) -> None:
    """Sign ``approval`` and append it to the ledger (with its index row), no checks:
    ``approve`` makes them first; the verifier re-checks the signer's role."""
    statement = approval.statement()
    signature = signer.sign(APPROVAL_DOMAIN, canonical_json(statement))
    with node.db.transaction() as tx:
        tx.execute(
            "INSERT INTO approvals(digest, key_id, statement, signature, verdict, time) VALUES (?,?,?,?,?,?)",
            (approval.digest, signer.key_id, json.dumps(statement), signature, approval.verdict, approval.time),
        )
        node.ledger.append_in(
            tx,
            type="bundle_approved" if approval.verdict == "approve" else "bundle_rejected",
            body={
                "digest": approval.digest,
                "name": approval.name,
                "version": approval.version,
                "statement": statement,
                "signature": signature,
            },
            signer=signer,
            subject=approval.name,
        )


def _verdict_entries(node: Node, row: Any) -> list[Any]:
    """The signed approve/reject entries for ``row``'s bundle, in ledger order."""
    found = [
        e
        for t in ("bundle_approved", "bundle_rejected")
        for e in node.ledger.entries(type=t)
        if e.body.get("digest") == row["digest"]
    ]
    return sorted(found, key=lambda e: e.index)


@dataclass(frozen=True, kw_only=True)
class ApprovalStatus:
    """Which keys' approvals of one bundle count under a policy, and why the others do not."""

    valid: frozenset[str]
    problems: tuple[str, ...]
    threshold: int

    @property
    def sufficient(self) -> bool:
        return len(self.valid) >= self.threshold


def approval_status(
    node: Node, policy: TrustPolicy, row: Any, *, now: datetime, check_expiry: bool = True
) -> ApprovalStatus:
    digest, name, version = row["digest"], row["name"], row["version"]
    problems: list[str] = []
    latest: dict[str, Approval] = {}
    submission = _submission(node, row)
    author = submission.actor if submission is not None else None
    for a in _verdict_entries(node, row):
        key_id = a.actor
        label = _label(node, policy, key_id)
        try:
            public = _public_key(node, policy, key_id)
            if public is None:
                raise TrustError(f"approval by {label} does not count: no board-signed role names that key")
            statement = a.body.get("statement")
            if not isinstance(statement, dict):
                raise TrustError(f"approval by {label} carries no statement")
            try:
                verify_signature(public, APPROVAL_DOMAIN, canonical_json(statement), str(a.body.get("signature")))
            except TrustError as exc:
                raise TrustError(f"approval by {label} does not count: {exc.message}") from None
            approval = Approval.from_statement(statement)
            # an approval signed for another bundle, copied onto this one
            if approval.digest != digest:
                raise TrustError(f"approval by {label} is for bundle {approval.digest[:12]}, not {digest[:12]}")
            if (approval.name, approval.version) != (name, version):
                raise TrustError(f"approval by {label} names {approval.name}@{approval.version}, not {name}@{version}")
            if approval.reviewer != key_id:
                raise TrustError(f"approval by {label} names another reviewer")
            if (approval.verdict == "approve") != (a.type == "bundle_approved"):
                raise TrustError(f"approval by {label} is recorded as {a.type} but says {approval.verdict}")
            _parse_time(approval.time)
            _parse_time(approval.expires)
        except TrustError as exc:
            problems.append(exc.message)
            continue
        # a key's latest signed verdict stands: a reviewer may withdraw by rejecting
        if key_id not in latest or _parse_time(approval.time) >= _parse_time(latest[key_id].time):
            latest[key_id] = approval
    valid: set[str] = set()
    limit = timedelta(days=policy.approval_lifetime_days)
    for key_id, approval in sorted(latest.items()):
        label = _label(node, policy, key_id)
        if approval.verdict != "approve":
            problems.append(f"{label} rejected it on {approval.time}")
            continue
        if not _holds(node, policy, key_id, "reviewer"):
            problems.append(f"approval by {label} does not count: it is not a reviewer key in the {policy.label}")
            continue
        revoked = node.keyring.revoked_at(key_id, node.ledger)
        if revoked:
            problems.append(f"approval by {label} does not count: key revoked on {revoked}")
            continue
        if key_id == author and not policy.author_may_approve:
            problems.append(f"approval by {label} does not count: authors may not approve their own bundle")
            continue
        signed_at = _parse_time(approval.time)
        if signed_at > now + _CLOCK_SKEW:
            problems.append(f"approval by {label} is dated in the future ({approval.time})")
            continue
        if check_expiry:
            expires = min(_parse_time(approval.expires), signed_at + limit)
            if expires <= now:
                problems.append(
                    f"approval by {label} expired on {_iso(expires)}; ask for a new approval (opal algo approve)"
                )
                continue
        valid.add(key_id)  # distinct key fingerprints: the same key twice, or under two names, counts once
    return ApprovalStatus(valid=frozenset(valid), problems=tuple(problems), threshold=policy.threshold)


# -- revocation and pins -------------------------------------------------------------


def revoke_bundle(node: Node, digest: str, *, reason: str, signer: Signer) -> None:
    """Board revocation of one bundle version: every later run of it is refused."""
    if not reason.strip():
        raise BadInputError("--reason is required: say why the bundle is revoked")
    row = _bundle_row(node, digest)
    policy = require_board_policy(node)
    _require_role(node, policy, signer, "board", "revoking a bundle")
    already = _revocation(node, row)
    if already:
        raise BadInputError(f"{row['name']}@{row['version']} was {already}")
    when = utcnow()
    with node.db.transaction() as tx:
        tx.execute("UPDATE bundles SET revoked_at = ?, revoke_reason = ? WHERE digest = ?", (when, reason, digest))
        node.ledger.append_in(
            tx,
            type="bundle_revoked",
            body={"digest": digest, "name": row["name"], "version": row["version"], "reason": reason},
            signer=signer,
            subject=digest,
        )


def _pin_statement(name: str, version: str, time: str) -> dict[str, Any]:
    return {"_type": PIN_TYPE, "name": name, "version": version, "time": time}


def pin_version(node: Node, name: str, version: str, *, signer: Signer, reason: str = "") -> None:
    """Board pin: NAME@VERSION may run although a higher version is fully approved."""
    ensure_trust_tables(node.db)
    row = node.db.one("SELECT * FROM bundles WHERE name = ? AND version = ?", (name, version))
    if row is None:
        raise BadInputError(f"no submitted algorithm {name}@{version}; see opal algo list")
    policy = require_board_policy(node)
    _require_role(node, policy, signer, "board", "pinning a version")
    statement = _pin_statement(name, version, utcnow())
    signature = signer.sign(PIN_DOMAIN, canonical_json(statement))
    with node.db.transaction() as tx:
        tx.execute("DELETE FROM bundle_pins WHERE name = ?", (name,))
        tx.execute(
            "INSERT INTO bundle_pins(name, version, statement, key_id, signature, time) VALUES (?,?,?,?,?,?)",
            (name, version, json.dumps(statement), signer.key_id, signature, statement["time"]),
        )
        node.ledger.append_in(
            tx,
            type="bundle_pinned",
            body={
                "name": name,
                "version": version,
                "digest": row["digest"],
                "reason": reason,
                "statement": statement,
                "signature": signature,
            },
            signer=signer,
            subject=name,
        )


def unpin(node: Node, name: str, *, signer: Signer) -> None:
    ensure_trust_tables(node.db)
    policy = require_board_policy(node)
    _require_role(node, policy, signer, "board", "unpinning")
    if _pinned_version(node, policy, name) == (None, None):
        raise BadInputError(f"{name} is not pinned")
    with node.db.transaction() as tx:
        tx.execute("DELETE FROM bundle_pins WHERE name = ?", (name,))
        node.ledger.append_in(tx, type="bundle_unpinned", body={"name": name}, signer=signer, subject=name)


def _pinned_version(node: Node, policy: TrustPolicy, name: str) -> tuple[str | None, str | None]:
    """(pinned version, None) for a valid board pin, (None, why not) otherwise; read from
    the signed ``bundle_pinned`` / ``bundle_unpinned`` entries (the latest stands)."""
    entries = sorted(
        [e for t in ("bundle_pinned", "bundle_unpinned") for e in node.ledger.entries(type=t)],
        key=lambda e: e.index,
    )
    entries = [e for e in entries if e.body.get("name") == name]
    if not entries or entries[-1].type == "bundle_unpinned":
        return None, None
    pin = entries[-1]
    key_id = pin.actor
    label = _label(node, policy, key_id)
    try:
        statement = pin.body.get("statement")
        public = _public_key(node, policy, key_id)
        if public is None or not isinstance(statement, dict):
            raise TrustError(f"pin by {label} does not count: no board-signed role names that key")
        verify_signature(public, PIN_DOMAIN, canonical_json(statement), str(pin.body.get("signature")))
        if (
            statement.get("_type") != PIN_TYPE
            or statement.get("name") != name
            or statement.get("version") != pin.body.get("version")
        ):
            raise TrustError(f"pin by {label} does not match its statement")
        if not _holds(node, policy, key_id, "board"):
            raise TrustError(f"pin by {label} does not count: not a board key in the {policy.label}")
        revoked = node.keyring.revoked_at(key_id, node.ledger)
        if revoked:
            raise TrustError(f"pin by {label} does not count: key revoked on {revoked}")
    except (TrustError, ValueError) as exc:
        return None, str(exc)
    return str(pin.body.get("version")), None


# -- the worker's check --------------------------------------------------------------


def verify_for_run(node: Node, digest: str) -> Bundle:
    """The worker's check before every run (DESIGN.md pipeline steps 1–2).

    Loads the bundle's exact bytes and recomputes the digest; checks the
    author's signature, k-of-n reviewer approvals by distinct key under the
    trust policy in force (role, revocation, expiry), bundle revocation and
    rollback. Returns the bundle whose bytes were hashed; raises TrustError
    naming the exact reason.
    """
    row = node.db.one("SELECT * FROM bundles WHERE digest = ?", (digest,))
    if row is None:
        raise TrustError(f"bundle {digest[:12]} was never submitted to this node; it may not run")
    ref = f"{row['name']}@{row['version']}"
    policy = require_board_policy(node)
    # 1. the exact bytes: the registry recomputes the digest from what it read
    bundle = node.registry.load(digest)
    if (bundle.manifest.name, bundle.manifest.version) != (row["name"], row["version"]):
        raise TrustError(
            f"bundle {digest[:12]} declares {bundle.ref} but was submitted as {ref}; resubmit it"
        )
    revoked = _revocation(node, row)
    if revoked:
        raise TrustError(f"bundle {ref} was {revoked}; it may not run")
    # 2a. author signature, from the signed submission entry
    submission = _submission(node, row)
    if submission is None:
        raise TrustError(f"the ledger records no submission of {ref} ({digest[:12]}); it may not run")
    author = submission.actor
    author_label = _label(node, policy, author)
    public = _public_key(node, policy, author)
    if public is None:
        raise TrustError(f"author key {author_label} of {ref} is unknown to this node; import it with opal keys import")
    if not _holds(node, policy, author, "statistician"):
        raise TrustError(f"author key {author_label} of {ref} is not a statistician key in the {policy.label}")
    author_revoked = node.keyring.revoked_at(author, node.ledger)
    if author_revoked:
        raise TrustError(f"author key {author_label} of {ref} was revoked on {author_revoked}")
    try:
        verify_signature(
            public,
            SUBMISSION_DOMAIN,
            _submission_statement(digest, row["name"], row["version"], author),
            str(submission.body.get("signature")),
        )
    except TrustError as exc:
        raise TrustError(f"author signature on {ref} by {author_label} is invalid: {exc.message}") from None
    # 2b. k-of-n approvals
    now = datetime.now(UTC)
    status = approval_status(node, policy, row, now=now)
    if not status.sufficient:
        detail = f"; {'; '.join(status.problems)}" if status.problems else ""
        raise TrustError(
            f"bundle {ref} has {len(status.valid)} valid approval(s), the trust policy needs "
            f"{policy.threshold} ({policy.label}){detail}"
        )
    # 2c. rollback: never lower than the highest fully approved, unrevoked version, unless pinned
    pinned, pin_problem = _pinned_version(node, policy, row["name"])
    if pinned != row["version"]:
        for other in _other_versions(node, row["name"], digest):
            if version_key(other["version"]) <= version_key(row["version"]) or _revocation(node, other):
                continue
            if approval_status(node, policy, other, now=now, check_expiry=False).sufficient:
                hint = f" ({pin_problem})" if pin_problem else ""
                raise TrustError(
                    f"{ref} is older than fully approved {row['name']}@{other['version']}; rollback refused "
                    f"(a board key may allow it: opal algo pin {ref}){hint}"
                )
    return bundle


# -- what a reviewer reads -----------------------------------------------------------


def _previous_approved(node: Node, policy: TrustPolicy, row: Any) -> Any | None:
    now = datetime.now(UTC)
    best = None
    for other in _other_versions(node, row["name"], row["digest"]):
        if version_key(other["version"]) >= version_key(row["version"]):
            continue
        if best is not None and version_key(other["version"]) <= version_key(best["version"]):
            continue
        if approval_status(node, policy, other, now=now, check_expiry=False).sufficient:
            best = other
    return best


def _diff(old: Bundle | None, new: Bundle) -> str:
    if old is None:
        return ""
    chunks: list[str] = []
    for path in sorted(set(old.files) | set(new.files)):
        a = old.files.get(path, b"").decode("utf-8", "replace").splitlines(keepends=True)
        b = new.files.get(path, b"").decode("utf-8", "replace").splitlines(keepends=True)
        chunks.extend(
            difflib.unified_diff(
                a, b, fromfile=f"{old.ref}/{path}" if path in old.files else "/dev/null",
                tofile=f"{new.ref}/{path}" if path in new.files else "/dev/null",
            )
        )
    return "".join(line if line.endswith("\n") else line + "\n" for line in chunks)


def diff_summary(old: Bundle | None, new: Bundle) -> str:
    """What ``opal algo review`` shows against the previous version: files changed,
    lines added and removed, then the unified diff ("" for a first version)."""
    diff = _diff(old, new)
    if not diff:
        return ""
    lines = diff.splitlines()
    files = sum(1 for line in lines if line.startswith("+++ "))
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++ "))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("--- "))
    return f"{files} file(s) changed, +{added} -{removed} line(s)\n{diff}"


def review_view(node: Node, digest: str) -> dict[str, Any]:
    """Everything a reviewer signs: manifest, parameter schema, privacy declaration,
    files, source, approvals so far, and the diff against the previous approved version."""
    row = _bundle_row(node, digest)
    bundle = node.registry.load(digest)
    policy = policy_in_force(node)
    previous_row = _previous_approved(node, policy, row)
    previous = node.registry.load(previous_row["digest"]) if previous_row is not None else None
    now = datetime.now(UTC)
    status = approval_status(node, policy, row, now=now)
    verdicts = []
    for a in _verdict_entries(node, row):
        statement = a.body.get("statement") if isinstance(a.body.get("statement"), dict) else {}
        verdict = "approve" if a.type == "bundle_approved" else "reject"
        verdicts.append({
            "reviewer": _label(node, policy, a.actor),
            "key_id": a.actor,
            "verdict": verdict,
            "time": statement.get("time", a.time),
            "expires": statement.get("expires"),
            "comment": statement.get("comment", ""),
            "counts": a.actor in status.valid and verdict == "approve",
            "index": a.index,
        })
    from opal.bundle.digest import file_manifest

    manifest = bundle.manifest
    return {
        "digest": digest,
        "name": manifest.name,
        "version": manifest.version,
        "author": _label(node, policy, str(row["author"])),
        "submitted": row["submitted"],
        "revoked": _revocation(node, row),
        "manifest": manifest.to_dict(),
        "parameters": manifest.parameters,
        "privacy": manifest.privacy.to_dict(),
        "files": file_manifest(bundle.files),
        "source": bundle.source,
        "previous": (
            {"version": previous_row["version"], "digest": previous_row["digest"]} if previous_row is not None else None
        ),
        "diff": _diff(previous, bundle),
        "approvals": verdicts,
        "valid_approvals": len(status.valid),
        "threshold": policy.threshold,
        "policy": policy.label,
    }
