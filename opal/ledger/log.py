"""The governance ledger: an append-only RFC 6962 Merkle log of signed entries.

Each entry is canonical JSON (RFC 8785) ``{"entry": {...}, "signature": ...}``
where ``entry`` names its index, type, time, actor key id and the event's
fields, and ``signature`` is the actor's Ed25519 signature over the canonical
bytes of ``entry``. The leaf is SHA-256(0x00 ‖ stored bytes) (RFC 6962 §2.1).
Entries never hold raw data values: only ids, digests, counts and reasons.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opal.canonical import canonical_json
from opal.db import Database
from opal.errors import BadInputError, LedgerCorrupt, TrustError
from opal.ledger import merkle
from opal.trust.keys import utcnow, verify_signature

__all__ = ["Ledger", "LedgerEntry", "Checkpoint", "VerifyReport", "ENTRY_DOMAIN", "CHECKPOINT_DOMAIN"]

ENTRY_DOMAIN = "ledger-entry"
CHECKPOINT_DOMAIN = "ledger-checkpoint"
ENTRY_VERSION = 1


class _SignerLike:  # structural: opal.trust.keyring.Signer
    key_id: str
    role: str

    def sign(self, domain: str, message: bytes) -> str: ...


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    index: int
    type: str
    time: str
    actor: str
    actor_role: str
    body: dict[str, Any]
    signature: str
    raw: bytes = field(repr=False)

    @property
    def leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.raw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "type": self.type,
            "time": self.time,
            "actor": self.actor,
            "actor_role": self.actor_role,
            "body": self.body,
            "signature": self.signature,
            "leaf_hash": self.leaf_hash.hex(),
        }

    @classmethod
    def parse(cls, raw: bytes) -> LedgerEntry:
        doc = json.loads(raw)
        e = doc["entry"]
        return cls(
            index=int(e["index"]),
            type=str(e["type"]),
            time=str(e["time"]),
            actor=str(e["actor"]),
            actor_role=str(e["actor_role"]),
            body=dict(e["body"]),
            signature=str(doc["signature"]),
            raw=raw,
        )

    def signed_part(self) -> bytes:
        return canonical_json(json.loads(self.raw)["entry"])


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    origin: str
    size: int
    root: str
    signer: str
    signature: str
    time: str

    def statement(self) -> bytes:
        return canonical_json({"origin": self.origin, "size": self.size, "root": self.root})

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": self.root,
            "signer": self.signer,
            "signature": self.signature,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Checkpoint:
        try:
            return cls(
                origin=str(d["origin"]),
                size=int(d["size"]),
                root=str(d["root"]),
                signer=str(d["signer"]),
                signature=str(d["signature"]),
                time=str(d.get("time", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise BadInputError("checkpoint must have origin, size, root, signer, signature") from None


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    size: int
    root: str
    signatures: int
    keys: int
    checkpoints: int
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "size": self.size,
            "root": self.root,
            "signatures_checked": self.signatures,
            "keys_seen": self.keys,
            "checkpoints_checked": self.checkpoints,
            "runs_checked": self.runs,
        }


class Ledger:
    def __init__(self, db: Database, *, origin: str = "opal") -> None:
        self.db = db
        self.origin = origin

    # -- writing -----------------------------------------------------------

    def append(self, *, type: str, body: dict[str, Any], signer: _SignerLike, subject: str | None = None) -> LedgerEntry:
        with self.db.transaction() as tx:
            return self.append_in(tx, type=type, body=body, signer=signer, subject=subject)

    def append_in(
        self,
        tx: sqlite3.Connection,
        *,
        type: str,
        body: dict[str, Any],
        signer: _SignerLike,
        subject: str | None = None,
    ) -> LedgerEntry:
        """Append inside a transaction the caller holds (``BEGIN IMMEDIATE``), so the
        index is taken under the write lock: no gaps, no duplicates."""
        (index,) = tx.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger").fetchone()
        entry = {
            "v": ENTRY_VERSION,
            "index": index,
            "type": type,
            "time": utcnow(),
            "actor": signer.key_id,
            "actor_role": signer.role,
            "body": body,
        }
        signature = signer.sign(ENTRY_DOMAIN, canonical_json(entry))
        raw = canonical_json({"entry": entry, "signature": signature})
        tx.execute(
            "INSERT INTO ledger(idx, entry, leaf_hash, type, actor, time, subject) VALUES (?,?,?,?,?,?,?)",
            (index, raw, merkle.leaf_hash(raw), type, signer.key_id, entry["time"], subject),
        )
        return LedgerEntry.parse(raw)

    def checkpoint(self, signer: _SignerLike) -> Checkpoint:
        """Sign (size, root) of what is committed now. Called after the commit, so a
        checkpoint never covers an entry that is not durable."""
        leaves = self.leaf_hashes()
        cp = Checkpoint(
            origin=self.origin,
            size=len(leaves),
            root=merkle.root(leaves).hex(),
            signer=signer.key_id,
            signature="",
            time=utcnow(),
        )
        cp = Checkpoint(**{**cp.to_dict(), "signature": signer.sign(CHECKPOINT_DOMAIN, cp.statement())})
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints(size, root, origin, signer, signature, time) VALUES (?,?,?,?,?,?)",
                (cp.size, cp.root, cp.origin, cp.signer, cp.signature, cp.time),
            )
        return cp

    # -- reading -----------------------------------------------------------

    def size(self) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM ledger")
        return int(row["n"]) if row else 0

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        sql = "SELECT leaf_hash FROM ledger ORDER BY idx"
        return [bytes(r["leaf_hash"]) for r in self.db.query(sql)][:size]

    def entries(
        self,
        *,
        type: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        where, params = [], []
        for col, val, op in (("type", type, "="), ("actor", actor, "="), ("subject", subject, "="), ("time", since, ">="), ("time", until, "<")):
            if val is not None:
                where.append(f"{col} {op} ?")
                params.append(val)
        sql = "SELECT entry FROM ledger"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY idx"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [LedgerEntry.parse(bytes(r["entry"])) for r in self.db.query(sql, params)]

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint.from_dict(dict(r)) for r in self.db.query("SELECT * FROM checkpoints ORDER BY size, signer")]

    def _raw_rows(self) -> Iterator[tuple[int, bytes]]:
        for r in self.db.query("SELECT idx, entry FROM ledger ORDER BY idx"):
            yield int(r["idx"]), bytes(r["entry"])

    # -- verifying ---------------------------------------------------------

    def verify(self, *, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Re-derive every leaf, the root and every signature; raise LedgerCorrupt naming
        the first bad entry. Returns what was checked."""
        rows = list(self._raw_rows())
        return verify_entries(rows, self.checkpoints(), progress=progress)


def verify_entries(
    rows: list[tuple[int, bytes]],
    checkpoints: list[Checkpoint],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    keys: dict[str, tuple[str, str]] = {}  # key_id -> (public key hex, role)
    revoked: dict[str, int] = {}  # key_id -> index of its revocation
    tree = merkle.MerkleTree()
    roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
    wanted = {cp.size for cp in checkpoints}
    runs_open: dict[str, str] = {}
    runs_seen = 0
    total = len(rows)
    for position, (idx, raw) in enumerate(rows):
        if idx != position:
            raise LedgerCorrupt(
                f"ledger entry {position} is missing (next stored index is {idx}); "
                "entries were deleted or reordered"
            )
        try:
            entry = LedgerEntry.parse(raw)
            if canonical_json(json.loads(raw)) != raw:
                raise ValueError("not canonical")
        except (ValueError, KeyError, TypeError):
            raise LedgerCorrupt(f"ledger entry {idx} is not a well-formed canonical entry") from None
        if entry.index != idx:
            raise LedgerCorrupt(f"ledger entry {idx} claims index {entry.index}; entries were moved")
        if entry.type == "key_added" and entry.body.get("key_id") not in keys:
            keys[str(entry.body["key_id"])] = (str(entry.body["public_key"]), str(entry.body["role"]))
        signer = keys.get(entry.actor)
        if signer is None:
            raise LedgerCorrupt(f"ledger entry {idx} is signed by unknown key {entry.actor[:16]}")
        if entry.actor in revoked and revoked[entry.actor] < idx:
            raise LedgerCorrupt(
                f"ledger entry {idx} is signed by key {entry.actor[:16]}, revoked at entry {revoked[entry.actor]}"
            )
        try:
            verify_signature(signer[0], ENTRY_DOMAIN, entry.signed_part(), entry.signature)
        except TrustError:
            raise LedgerCorrupt(f"ledger entry {idx} ({entry.type}): signature does not verify") from None
        if entry.type == "key_revoked":
            revoked.setdefault(str(entry.body["key_id"]), idx)
        if entry.type == "run_requested":
            runs_open[str(entry.body["run_id"])] = "requested"
        elif entry.type in ("run_started", "run_finished"):
            run_id = str(entry.body.get("run_id"))
            if run_id not in runs_open:
                raise LedgerCorrupt(f"ledger entry {idx} ({entry.type}) is for run {run_id} that was never requested")
            if runs_open[run_id] == "finished":
                raise LedgerCorrupt(f"ledger entry {idx}: run {run_id} already has an outcome")
            if entry.type == "run_finished":
                runs_open[run_id] = "finished"
                runs_seen += 1
        tree.append(merkle.leaf_hash(raw))
        if tree.size in wanted:
            roots[tree.size] = tree.root()
        if progress is not None and (position % 4096 == 0 or position == total - 1):
            progress(position + 1, total)
    for cp in checkpoints:
        signer = keys.get(cp.signer)
        if signer is None:
            raise LedgerCorrupt(f"checkpoint at size {cp.size} is signed by unknown key {cp.signer[:16]}")
        try:
            verify_signature(signer[0], CHECKPOINT_DOMAIN, cp.statement(), cp.signature)
        except TrustError:
            raise LedgerCorrupt(f"checkpoint at size {cp.size}: signature does not verify") from None
        if cp.size > total:
            raise LedgerCorrupt(
                f"signed checkpoint covers {cp.size} entries but the ledger holds {total}; "
                "the ledger was truncated"
            )
        if roots[cp.size].hex() != cp.root:
            raise LedgerCorrupt(
                f"root of the first {cp.size} entries does not match the signed checkpoint; "
                "history was rewritten"
            )
    return VerifyReport(
        size=total,
        root=tree.root().hex(),
        signatures=total + len(checkpoints),
        keys=len(keys),
        checkpoints=len(checkpoints),
        runs=runs_seen,
    )
