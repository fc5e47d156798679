"""The governance ledger: an append-only RFC 6962 Merkle log of signed entries.

Each entry is canonical JSON (RFC 8785) ``{"entry": {...}, "signature": ...}``
where ``entry`` names its index, type, time, actor key id and the event's
fields, and ``signature`` is the actor's Ed25519 signature over the canonical
bytes of ``entry``. The leaf is SHA-256(0x00 ‖ stored bytes) (RFC 6962 §2.1).
Entries never hold raw data values: only ids, digests, counts and reasons.

Event types written across OPAL (``type`` → who signs, main body fields);
``opal.ledger.verify.SIGNERS`` enforces the signers under the board-signed
trust policy in force, and a key never vouches for itself:

- ``trust_policy`` — recorded by a board or operator key; carries the whole
  policy document, itself signed by the board's threshold.
- ``key_added`` (a board key grants a role) / ``key_revoked`` (board or
  operator) — ``key_id``, ``public_key``, ``role`` / ``reason``.
- ``bundle_submitted`` (statistician) / ``bundle_approved`` /
  ``bundle_rejected`` (reviewer) / ``bundle_revoked``, ``bundle_pinned``,
  ``bundle_unpinned`` (board) — ``digest``, ``name``, ``version``, the signed
  statement.
- ``run_requested`` (statistician), ``run_started``, ``run_finished`` (the
  node's operator key; a requester may sign the outcome ``cancelled``) —
  ``run_id``, bundle ``digest``, dataset version, ``epsilon_reserved`` /
  ``epsilon_spent``, ``outcome`` (released, refused, failed) with
  ``reason``, ``result_digest``. Budget spending is recorded by these run
  entries; the ``budget_events`` table is the same facts for fast queries.
- ``dataset_registered``, ``policy_changed`` and any other type — operator.

The ``type``, ``subject``, ``actor``, ``time`` and ``leaf_hash`` columns are an
index: ``subject`` and the rest are in the signed entry, ``verify`` checks
each column against it, and readers keep only entries whose signed fields
match what they asked for.

Storage (``opal.db``): SQLite WAL + ``synchronous=FULL`` + ``BEGIN IMMEDIATE``
by default, PostgreSQL with a database-wide advisory write lock for several
nodes. The next index is read and the entry inserted under that lock, in the
caller's transaction, so there are no gaps or duplicates and a crash leaves
either the whole entry or nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opal.canonical import canonical_json
from opal.db import Database
from opal.errors import BadInputError, LedgerCorrupt
from opal.ledger import merkle
from opal.ledger.records import (
    ENTRY_DOMAIN,
    ENTRY_VERSION,
    Checkpoint,
    Cosignature,
    LedgerEntry,
    VerifyReport,
    envelope,
)
from opal.trust.keys import utcnow

if TYPE_CHECKING:
    # The verifier and the auditor's state load only to verify: appending a
    # run request or reading entries does not pay for them.
    from opal.ledger.verify import Authority

__all__ = [
    "ENTRY_DOMAIN",
    "Checkpoint",
    "Cosignature",
    "Ledger",
    "LedgerEntry",
    "VerifyReport",
]

_PAGE = 20_000


class SignerLike(Protocol):  # structural: opal.trust.keyring.Signer
    @property
    def key_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def public_key(self) -> str: ...

    def sign(self, domain: str, message: bytes) -> str: ...

    def sign_note(self, message: bytes) -> str: ...


class Ledger:
    def __init__(self, db: Database, *, origin: str = "opal") -> None:
        self.db = db
        self.origin = origin
        # Leaves this process has already read and hashed from committed
        # entries; extended, never rebuilt, so a checkpoint or proof costs
        # O(new entries + log n).
        self._tree = merkle.MerkleTree()
        self._tree_lock = threading.Lock()

    # -- writing -----------------------------------------------------------

    def append(
        self, *, type: str, body: dict[str, Any], signer: SignerLike, subject: str | None = None
    ) -> LedgerEntry:
        with self.db.transaction() as tx:
            return self.append_in(tx, type=type, body=body, signer=signer, subject=subject)

    def append_many(
        self, events: Sequence[Mapping[str, Any]], *, signer: SignerLike
    ) -> list[LedgerEntry]:
        """Group commit: append ``events`` (each ``{"type", "body", "subject"?}``) in one
        transaction, so they cost one durable commit (one fsync) together."""
        with self.db.transaction() as tx:
            return [
                self.append_in(
                    tx,
                    type=str(e["type"]),
                    body=dict(e["body"]),
                    signer=signer,
                    subject=e.get("subject"),
                )
                for e in events
            ]

    def append_in(
        self,
        tx: Any,
        *,
        type: str,
        body: dict[str, Any],
        signer: SignerLike,
        subject: str | None = None,
    ) -> LedgerEntry:
        """Append inside a transaction the caller holds (``Database.transaction()``).

        That transaction holds the database-wide write lock (``BEGIN IMMEDIATE``
        on SQLite, an advisory transaction lock on PostgreSQL), so the index
        read here and the insert below cannot interleave with another writer:
        no gaps, no duplicates. The entry is durable when the caller commits.
        """
        (index,) = tx.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger").fetchone()
        index = int(index)
        entry = {
            "v": ENTRY_VERSION,
            "index": index,
            "type": type,
            "subject": subject,
            "time": utcnow(),
            "actor": signer.key_id,
            "actor_role": signer.role,
            "body": body,
        }
        signed = canonical_json(entry)
        signature = signer.sign(ENTRY_DOMAIN, signed)
        raw = envelope(signed, signature)
        tx.execute(
            "INSERT INTO ledger(idx, entry, leaf_hash, type, actor, time, subject) VALUES (?,?,?,?,?,?,?)",
            (index, raw, merkle.leaf_hash(raw), type, signer.key_id, entry["time"], subject),
        )
        return LedgerEntry(
            index=index,
            type=type,
            time=str(entry["time"]),
            actor=signer.key_id,
            actor_role=signer.role,
            body=body,
            signature=signature,
            raw=raw,
            subject=subject,
        )

    def checkpoint(self, signer: SignerLike) -> Checkpoint:
        """Sign ``(origin, size, root)`` of what is committed now, as a C2SP tlog-checkpoint note.

        Called after the commit, so a checkpoint never covers an entry that is
        not durable. Before signing, the new tree is checked against the
        latest stored checkpoint: the operator never signs a fork.

        Raises:
            LedgerCorrupt: the committed ledger does not extend the latest checkpoint.
        """
        with self._tree_lock:
            tree = self._sync_tree()
            latest = self.latest_checkpoint()
            if latest is not None and (
                latest.size > tree.size or tree.root(latest.size).hex() != latest.root
            ):
                raise LedgerCorrupt(
                    f"refusing to sign: the ledger ({tree.size} entries) does not extend the signed "
                    f"checkpoint of size {latest.size}; run opal ledger verify"
                )
            size, root = tree.size, tree.root().hex()
        statement = Checkpoint(
            origin=self.origin, size=size, root=root, signer=signer.key_id, signature="", time=""
        )
        cp = Checkpoint(
            origin=self.origin,
            size=size,
            root=root,
            signer=signer.key_id,
            signature=signer.sign_note(statement.body()),
            time=utcnow(),
        )
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO checkpoints(size, root, origin, signer, signature, time) VALUES (?,?,?,?,?,?)",
                (cp.size, cp.root, cp.origin, cp.signer, cp.signature, cp.time),
            )
        return cp

    def add_cosignature(self, cs: Cosignature) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO cosignatures(size, root, origin, witness, signature, time) VALUES (?,?,?,?,?,?)",
                (cs.size, cs.root, cs.origin, cs.witness, cs.signature, cs.time),
            )

    # -- reading -----------------------------------------------------------

    def size(self) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM ledger")
        return int(row["n"]) if row else 0

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        sql = "SELECT leaf_hash FROM ledger ORDER BY idx"
        params: list[Any] = []
        if size is not None:
            sql += " LIMIT ?"
            params.append(int(size))
        return [bytes(r["leaf_hash"]) for r in self.db.query(sql, params)]

    def tree(self) -> merkle.MerkleTree:
        """The Merkle tree of every committed entry, leaves recomputed from the stored bytes.

        Raises:
            LedgerCorrupt: an index is missing or a stored leaf hash does not match its entry.
        """
        with self._tree_lock:
            return self._sync_tree()

    def _sync_tree(self) -> merkle.MerkleTree:
        tree = self._tree
        while True:
            start = tree.size
            rows = self.db.query(
                "SELECT idx, entry, leaf_hash FROM ledger WHERE idx >= ? ORDER BY idx LIMIT ?",
                (start, _PAGE),
            )
            hashes = []
            for offset, r in enumerate(rows):
                idx, raw = int(r["idx"]), bytes(r["entry"])
                if idx != start + offset:
                    raise LedgerCorrupt(
                        f"ledger entry {start + offset} is missing (the next stored index is {idx}); "
                        "run opal ledger verify"
                    )
                leaf = merkle.leaf_hash(raw)
                if leaf != bytes(r["leaf_hash"]):
                    raise LedgerCorrupt(
                        f"ledger entry {idx}: stored leaf hash does not match its bytes; run opal ledger verify"
                    )
                hashes.append(leaf)
            tree.extend(hashes)
            if len(rows) < _PAGE:
                if (
                    tree.size > 0
                    and self.db.one("SELECT 1 AS x FROM ledger WHERE idx = ?", (tree.size - 1,))
                    is None
                ):
                    raise LedgerCorrupt(
                        f"ledger entry {tree.size - 1} was read before and is gone now; entries were deleted"
                    )
                return tree

    def entries(
        self,
        *,
        type: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        start: int | None = None,
        stop: int | None = None,
        newest: bool = False,
    ) -> list[LedgerEntry]:
        """Entries matching every given filter, in index order. ``since``/``until`` compare
        ISO-8601 UTC times (``until`` exclusive); ``start``/``stop`` are indexes (``stop`` exclusive).
        ``newest``: with ``limit``, the last ``limit`` matches (still returned in index order).

        The columns only find candidates: each entry is parsed and kept only if its
        signed fields match the filters, so a relabelled row never passes for another
        type or subject (``verify`` names such rows).
        """
        where, params = [], []
        for col, val, op in (
            ("type", type, "="),
            ("actor", actor, "="),
            ("subject", subject, "="),
            ("time", since, ">="),
            ("time", until, "<"),
            ("idx", start, ">="),
            ("idx", stop, "<"),
        ):
            if val is not None:
                where.append(f"{col} {op} ?")
                params.append(val)
        sql = "SELECT idx, entry, leaf_hash FROM ledger"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY idx DESC" if newest else " ORDER BY idx"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        found = []
        for r in self.db.query(sql, params):
            raw = _matching_leaf(int(r["idx"]), bytes(r["entry"]), r["leaf_hash"])
            try:
                e = LedgerEntry.parse(raw)
            except (ValueError, KeyError, TypeError):
                continue  # not an entry at all: verify names it
            if (
                (type is not None and e.type != type)
                or (actor is not None and e.actor != actor)
                or (subject is not None and e.subject != subject)
                or (since is not None and e.time < since)
                or (until is not None and e.time >= until)
            ):
                continue
            found.append(e)
        return sorted(found, key=lambda e: e.index) if newest else found

    def iter_entries(self) -> Iterator[LedgerEntry]:
        """Every entry in index order, parsed from its stored signed bytes, in pages
        (bounded memory); rows that are not entries are skipped (verify names them)."""
        for idx, raw, columns in self._raw_rows(2**62):
            raw = _matching_leaf(idx, raw, columns[4])
            try:
                yield LedgerEntry.parse(raw)
            except (ValueError, KeyError, TypeError):
                continue

    def entry(self, index: int) -> LedgerEntry:
        row = self.db.one("SELECT entry, leaf_hash FROM ledger WHERE idx = ?", (int(index),))
        if row is None:
            raise BadInputError(
                f"the ledger has no entry {index} (it holds {self.size()}); see opal ledger show"
            )
        return LedgerEntry.parse(_matching_leaf(int(index), bytes(row["entry"]), row["leaf_hash"]))

    def index_of(self, leaf_hash_hex: str) -> int:
        try:
            leaf = bytes.fromhex(leaf_hash_hex)
        except ValueError:
            raise BadInputError(
                f"expected an entry index or a 64-hex-digit leaf hash, found {leaf_hash_hex!r}"
            ) from None
        row = self.db.one("SELECT idx FROM ledger WHERE leaf_hash = ?", (leaf,))
        if row is None:
            raise BadInputError(
                f"no ledger entry has leaf hash {leaf_hash_hex}; see opal ledger show --json"
            )
        return int(row["idx"])

    def checkpoints(self) -> list[Checkpoint]:
        return [
            Checkpoint.from_dict(dict(r))
            for r in self.db.query("SELECT * FROM checkpoints ORDER BY size, signer, root")
        ]

    def cosignatures(self, *, size: int | None = None) -> list[Cosignature]:
        if size is None:
            rows = self.db.query("SELECT * FROM cosignatures ORDER BY size, witness, root")
        else:
            rows = self.db.query(
                "SELECT * FROM cosignatures WHERE size = ? ORDER BY witness", (size,)
            )
        return [Cosignature.from_dict(dict(r)) for r in rows]

    def latest_checkpoint(self, *, covering: int | None = None) -> Checkpoint | None:
        """The largest signed checkpoint (covering index ``covering`` if given)."""
        sql = "SELECT * FROM checkpoints"
        params: list[Any] = []
        if covering is not None:
            sql += " WHERE size > ?"
            params.append(int(covering))
        row = self.db.one(sql + " ORDER BY size DESC, time DESC LIMIT 1", params)
        return Checkpoint.from_dict(dict(row)) if row else None

    def authority(self, *, stop: int | None = None) -> Authority:
        """Roles replayed from the signed policy and key entries (each signature checked).

        Raises:
            LedgerCorrupt: one of them does not verify.
        """
        from opal.ledger.verify import Authority, check_entry

        auth = Authority()
        found = [e for t in ("trust_policy", "key_added", "key_revoked") for e in self.entries(type=t, stop=stop)]
        for e in sorted(found, key=lambda e: e.index):
            check_entry(e.index, e.raw, auth)
        return auth

    def _index_rows(self, stop: int) -> Iterator[tuple[int, str | None, str | None, str | None, str | None]]:
        """``(idx, type, subject, actor, time)`` columns, checked by verify against the signed entries."""
        last = -1
        while True:
            rows = self.db.query(
                "SELECT idx, type, subject, actor, time FROM ledger WHERE idx > ? AND idx < ? ORDER BY idx LIMIT ?",
                (last, stop, _PAGE),
            )
            for r in rows:
                last = int(r["idx"])
                yield last, r["type"], r["subject"], r["actor"], r["time"]
            if len(rows) < _PAGE:
                return

    def _raw_rows(self, stop: int, *, start: int = 0) -> Iterator[tuple[int, bytes, tuple[Any, ...]]]:
        """``(idx, stored bytes, index columns)`` from ``start``; keyset pages: bounded memory
        on large ledgers, on SQLite and PostgreSQL alike."""
        last = start - 1
        while True:
            rows = self.db.query(
                "SELECT idx, entry, type, subject, actor, time, leaf_hash FROM ledger "
                "WHERE idx > ? AND idx < ? ORDER BY idx LIMIT ?",
                (last, stop, _PAGE),
            )
            for r in rows:
                last = int(r["idx"])
                yield last, bytes(r["entry"]), (r["type"], r["subject"], r["actor"], r["time"], r["leaf_hash"])
            if len(rows) < _PAGE:
                return

    # -- verifying ---------------------------------------------------------

    def verify(
        self,
        *,
        progress: Callable[[int, int], None] | None = None,
        against: Checkpoint | None = None,
        workers: int | None = None,
        state: Path | None = None,
        full: bool = False,
    ) -> VerifyReport:
        """Re-derive every leaf, the root, every signature and every role (``opal.ledger.verify``).

        With ``state`` (the auditor's own file, see ``opal.ledger.audit_state``):
        prove the ledger extends the tree recorded there, check only the entries
        after it, and record the new tree. ``full``: re-audit every entry (on
        every core) and still demand the ledger extends the held tree.

        Raises:
            LedgerCorrupt: naming the first bad entry or checkpoint, or the held checkpoint.
        """
        from opal.ledger.audit_state import AuditState
        from opal.ledger.verify import Authority, RowSource, budget_tables, check_budget_tables, verify_entries

        held = AuditState.load(state) if state is not None else None
        checkpoints = self.checkpoints()
        cosignatures = self.cosignatures()
        # The size and the budget tables in one snapshot: a run's charge and its
        # run_finished entry commit together, so the tables must equal the replay.
        with self.db.snapshot() as tx:
            total = int(tx.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger").fetchone()[0])
            tables = budget_tables(tx)
        start, auth, runs_open = 0, None, None
        prove_held: Callable[[], merkle.MerkleTree] | None = None
        if held is not None:
            if held.origin != self.origin:
                raise LedgerCorrupt(
                    f"your audit state {state} is for log {held.origin!r}, this ledger calls itself "
                    f"{self.origin!r}; the log's identity changed"
                )
        if held is not None and not full:
            if total < held.size:
                raise LedgerCorrupt(
                    f"the ledger holds {total} entries, fewer than {held.label} in your audit state; "
                    "it was truncated or rolled back to an older copy"
                )
            held_state = held

            def prefix() -> merkle.MerkleTree:
                # The leaves already verified, as the index holds them: their root must be the
                # one held, which proves them unchanged (RFC 9162 §2.1.4 from the held tree).
                leaves = self.db.ledger_leaf_hashes(held_state.size)
                if len(leaves) != held_state.size * merkle.HASH_SIZE:  # a leaf_hash cell of another length
                    leaves = b""
                tree = merkle.MerkleTree.from_leaf_bytes(leaves)
                if tree.size != held_state.size or tree.root().hex() != held_state.root:
                    raise LedgerCorrupt(
                        f"the ledger's first {held_state.size} entries do not match {held_state.label} in your "
                        "audit state; history was rewritten (a fork, or a restored copy with different entries)"
                    )
                return tree

            prove_held = prefix
            start, auth, runs_open = held.size, Authority.from_state(held.authority), held.runs_open
        # The type column is not signed: these only let workers start early.
        key_hints = [
            bytes(r["entry"])
            for r in self.db.query(
                "SELECT entry FROM ledger WHERE type IN ('key_added', 'trust_policy') AND idx < ?", (total,)
            )
        ]
        resume: dict[str, Any] = {}
        report = verify_entries(
            self._raw_rows(total, start=start),
            checkpoints,
            cosignatures=cosignatures,
            against=against,
            total=total,
            key_hints=key_hints,
            workers=workers,
            progress=progress,
            start=start,
            prefix=prove_held,
            auth=auth,
            runs_open=runs_open,
            resume=resume,
            held=(held.size, held.root, held.label) if held is not None and full else None,
            source=RowSource(
                path=str(self.db.path) if self.db.path is not None else None, url=self.db.url
            ),
        )
        check_budget_tables(tables, resume["authority"].get("budget", {}))
        if state is None:
            return report
        latest = max(checkpoints, key=lambda c: c.size, default=None)
        AuditState.record(
            origin=self.origin,
            size=report.size,
            root=report.root,
            resume=resume,
            checkpoint=latest.to_dict() if latest is not None else None,
        ).save(state)
        info = {"path": str(state), "from_size": held.size if held else 0, "recorded_size": report.size}
        return dataclasses.replace(report, state=info)


def _matching_leaf(idx: int, raw: bytes, leaf: Any) -> bytes:
    """``raw``, if it still hashes to its leaf (RFC 9162 §2.1.1); raise otherwise.

    Decisions read entries from the database. The auditor's incremental check
    rebuilds the audited prefix from the leaf-hash column, so an operator who
    rewrote an old entry's bytes alone (un-revoking a key, say) would change a
    decision unseen: here such an entry stops every decision instead, and one
    who rewrote the leaf hash too changes the root the auditor holds.
    """
    if merkle.leaf_hash(raw) != bytes(leaf):
        raise LedgerCorrupt(
            f"ledger entry {idx} no longer matches its leaf hash: the database was edited; "
            "nothing decides on it (run opal ledger verify --full)"
        )
    return raw
