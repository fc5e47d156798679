"""Re-derive a ledger from its bytes: every leaf, the root, every signature.

The rules a ledger must satisfy, checked in index order so the first bad
entry is the one named:

1. entries are numbered 0, 1, 2, … with no gap (deletion, reordering) and each
   entry names its own index (an entry moved elsewhere);
2. the stored bytes are canonical JSON (RFC 8785) of ``{"entry", "signature"}``;
3. the signer's public key was added by an earlier (or the same, self-signed)
   ``key_added`` entry, was not revoked by an earlier ``key_revoked`` entry,
   and has the role the entry claims;
4. the Ed25519 signature over the canonical ``entry`` verifies;
5. run entries follow their lifecycle (requested → started → one outcome);
6. every stored checkpoint and cosignature is signed by a known key and its
   root equals the root recomputed from the leaves; two signed checkpoints of
   the same size with different roots are equivocation;
7. a checkpoint the auditor holds (``against``) is consistent with the ledger
   now: an RFC 9162 §2.1.4 consistency proof from it to the current tree
   verifies (a truncated or forked ledger fails here).

Signature checks dominate the cost (Ed25519 verify is ~50-130 µs each), so on
large ledgers they run in a process pool while the main process parses.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from opal.canonical import canonical_json
from opal.errors import LedgerCorrupt, TrustError
from opal.ledger import merkle
from opal.ledger.records import (
    CHECKPOINT_DOMAIN,
    COSIGN_DOMAIN,
    ENTRY_DOMAIN,
    ENTRY_VERSION,
    Checkpoint,
    Cosignature,
    LedgerEntry,
    VerifyReport,
    signed_part,
)
from opal.trust.keys import key_id_of, verify_signature

__all__ = [
    "KeyState",
    "check_against",
    "check_checkpoint_signature",
    "check_cosignature",
    "check_entry",
    "check_equivocation",
    "parse_canonical",
    "verify_entries",
]

# Below this many entries a process pool costs more than it saves.
POOL_MIN_ENTRIES = 20_000
_CHUNK = 2048
_ENTRY_KEYS = {"v", "index", "type", "time", "actor", "actor_role", "body"}


class _Bad(Exception):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(index, message)
        self.index = index
        self.message = message


def _bad(index: int, message: str) -> _Bad:
    return _Bad(index, f"ledger entry {index} {message}")


@dataclass
class KeyState:
    """Which keys the ledger has added and revoked, replayed entry by entry."""

    keys: dict[str, tuple[str, str, int]] = field(
        default_factory=dict
    )  # key_id -> (public hex, role, added at)
    revoked: dict[str, int] = field(default_factory=dict)  # key_id -> index of its revocation

    def apply(self, index: int, type_: str, body: Any) -> None:
        """Record a key_added / key_revoked entry; raise ValueError if its body is malformed."""
        if type_ == "key_added":
            key_id, public, role = str(body["key_id"]), str(body["public_key"]), str(body["role"])
            raw = bytes.fromhex(public)
            if len(raw) != 32 or key_id_of(raw) != key_id:
                raise ValueError("key_id is not the SHA-256 of the public key")
            self.keys.setdefault(key_id, (public, role, index))
        elif type_ == "key_revoked":
            self.revoked.setdefault(str(body["key_id"]), index)

    def signer(self, key_id: str, *, at: int, what: str, roles: Sequence[str] | None = None) -> str:
        """The public key (hex) of ``key_id`` usable at index ``at``; raise LedgerCorrupt if not."""
        found = self.keys.get(key_id)
        if found is None:
            raise LedgerCorrupt(
                f"{what} is signed by unknown key {key_id[:16]}; no key_added entry names it"
            )
        public, role, added = found
        if added > at:
            raise LedgerCorrupt(
                f"{what} is signed by key {key_id[:16]}, added only later at entry {added}"
            )
        when = self.revoked.get(key_id)
        if when is not None and when < at:
            raise LedgerCorrupt(f"{what} is signed by key {key_id[:16]}, revoked at entry {when}")
        if roles is not None and role not in roles:
            raise LedgerCorrupt(
                f"{what} is signed by key {key_id[:16]} with role {role!r}; expected {' or '.join(roles)}"
            )
        return public

    def to_dict(self) -> dict[str, Any]:
        return {
            k: {"public_key": p, "role": r, "added_at": a, "revoked_at": self.revoked.get(k)}
            for k, (p, r, a) in self.keys.items()
        }


def _inspect(idx: int, raw: bytes, keys: KeyState) -> tuple[dict[str, Any], str, bytes, str]:
    """Rules 2-3 for one entry, updating ``keys``; returns (entry, signer's public key,
    signed bytes, signature) for the signature check. Raises _Bad."""
    try:
        doc = parse_canonical(raw)
        if set(doc) != {"entry", "signature"} or set(doc["entry"]) != _ENTRY_KEYS:
            raise ValueError("unexpected fields")
        e, signature = doc["entry"], doc["signature"]
        if not isinstance(signature, str) or not isinstance(e["body"], dict):
            raise TypeError("wrong types")
        if not all(isinstance(e[k], str) for k in ("type", "time", "actor", "actor_role")):
            raise TypeError("wrong types")
    except (ValueError, KeyError, TypeError):
        raise _bad(idx, "is not a well-formed canonical entry") from None
    if e["index"] != idx:
        raise _bad(idx, f"claims index {e['index']}; entries were moved")
    if e["v"] != ENTRY_VERSION:
        raise _bad(idx, f"has format version {e['v']}, expected {ENTRY_VERSION}")
    type_, actor = e["type"], e["actor"]
    if type_ == "key_added":
        try:
            keys.apply(idx, type_, e["body"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _bad(idx, f"(key_added) is malformed: {exc}") from None
    try:
        public = keys.signer(actor, at=idx, what=f"ledger entry {idx} ({type_})")
    except LedgerCorrupt as exc:
        raise _Bad(idx, exc.message) from None
    if keys.keys[actor][1] != e["actor_role"]:
        raise _bad(
            idx,
            f"claims role {e['actor_role']!r} but key {actor[:16]} has role {keys.keys[actor][1]!r}",
        )
    part = signed_part(raw, signature)
    if part is None:
        raise _bad(idx, "is not a well-formed canonical entry")
    if type_ == "key_revoked":
        try:
            keys.apply(idx, type_, e["body"])
        except (KeyError, TypeError):
            raise _bad(idx, "(key_revoked) is malformed") from None
    return e, public, part, signature


def check_entry(idx: int, raw: bytes, keys: KeyState) -> LedgerEntry:
    """Check one entry on its own (rules 2-4), updating ``keys``; used offline on
    exports and receipts. Raises LedgerCorrupt."""
    try:
        e, public, part, signature = _inspect(idx, raw, keys)
        failure = _check_signatures([(idx, public, part, signature, e["type"])])
        if failure is not None:
            raise _Bad(*failure)
    except _Bad as bad:
        raise LedgerCorrupt(bad.message) from None
    return LedgerEntry.parse(raw)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_canonical(raw: bytes) -> Any:
    """Parse ``raw``; raise ValueError unless it is RFC 8785 canonical JSON.

    Fast path: for ASCII documents without fractional numbers, RFC 8785 and
    ``json.dumps(sort_keys, compact)`` agree byte for byte; anything else is
    re-encoded with the real RFC 8785 implementation.
    """
    floats: list[str] = []

    def _float(text: str) -> float:
        floats.append(text)
        return float(text)

    doc = json.loads(raw, parse_float=_float, parse_constant=_reject_constant)
    if floats or not raw.isascii():
        again = canonical_json(doc)
    else:
        again = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if again != raw:
        raise ValueError("not canonical JSON")
    return doc


def _check_signatures(jobs: list[tuple[int, str, bytes, str, str]]) -> tuple[int, str] | None:
    """Verify a chunk; return the first failure ``(index, message)``. Runs in pool workers."""
    for index, public, message, signature, type_ in jobs:
        try:
            verify_signature(public, ENTRY_DOMAIN, message, signature)
        except TrustError:
            return index, f"ledger entry {index} ({type_}): signature does not verify"
    return None


def _mp_context() -> Any:
    # fork: workers need no re-import of the caller's __main__ (spawn would
    # re-run an unguarded script) and start in milliseconds. They only call
    # into cryptography, so no lock held by another thread at fork matters.
    try:
        return get_context("fork")
    except ValueError:  # pragma: no cover - platforms without fork
        return get_context("spawn")


def check_checkpoint_signature(cp: Checkpoint, keys: KeyState, *, what: str | None = None) -> None:
    what = what or f"checkpoint at size {cp.size}"
    public = keys.signer(cp.signer, at=cp.size - 1, what=what, roles=("operator",))
    try:
        verify_signature(public, CHECKPOINT_DOMAIN, cp.statement(), cp.signature)
    except TrustError:
        raise LedgerCorrupt(f"{what}: signature by {cp.signer[:16]} does not verify") from None


def check_cosignature(cs: Cosignature, keys: KeyState) -> None:
    what = f"cosignature of size {cs.size} by witness {cs.witness[:16]}"
    public = keys.signer(cs.witness, at=cs.size - 1, what=what, roles=("board",))
    try:
        verify_signature(public, COSIGN_DOMAIN, cs.statement(), cs.signature)
    except TrustError:
        raise LedgerCorrupt(f"{what}: signature does not verify") from None


def check_equivocation(statements: Iterable[tuple[int, str, str]]) -> None:
    """Raise LedgerCorrupt if two signed statements give one size two roots.

    ``statements`` are ``(size, root hex, who signed)``.
    """
    seen: dict[int, tuple[str, str]] = {}
    for size, root, who in statements:
        first = seen.setdefault(size, (root, who))
        if first[0] != root:
            raise LedgerCorrupt(
                f"equivocation: two signed checkpoints of size {size} have different roots "
                f"({first[0][:16]}… by {first[1][:16]}, {root[:16]}… by {who[:16]}); "
                "the log showed different histories to different parties"
            )


def verify_entries(
    rows: Iterable[tuple[int, bytes]],
    checkpoints: Sequence[Checkpoint],
    *,
    cosignatures: Sequence[Cosignature] = (),
    against: Checkpoint | None = None,
    total: int | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check rules 1-7 (module docstring); raise LedgerCorrupt naming the first bad entry.

    ``rows`` are ``(index, stored bytes)`` in index order. ``workers``: signature
    processes (default: one per core for large ledgers, 0 = verify inline).
    """
    started = time.perf_counter()
    if total is None:
        rows = list(rows)
        total = len(rows)
    if workers is None:
        workers = (os.cpu_count() or 1) if total >= POOL_MIN_ENTRIES else 0
    keys = KeyState()
    leaves: list[bytes] = []
    runs_open: dict[str, str] = {}
    runs_seen = 0
    sha256 = hashlib.sha256
    pool = (
        ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) if workers > 0 else None
    )
    pending: list[
        tuple[Future[tuple[int, str] | None], list[tuple[int, str, bytes, str, str]]]
    ] = []
    jobs: list[tuple[int, str, bytes, str, str]] = []

    failures: list[tuple[int, str]] = []

    def collect(*, wait: bool) -> None:
        # Drop finished chunks so memory stays bounded; keep their failures.
        keep = []
        for future, chunk in pending:
            if not (wait or future.done()):
                keep.append((future, chunk))
                continue
            try:
                result = future.result()
            except BrokenProcessPool:  # a worker died (OOM, signal): check its chunk here
                result = _check_signatures(chunk)
            if result is not None:
                failures.append(result)
        pending[:] = keep

    def flush() -> None:
        nonlocal jobs
        if not jobs:
            return
        chunk, jobs = jobs, []
        if pool is not None:
            collect(wait=False)
            if failures:  # stop early; the handler below finds the earliest one
                raise _Bad(*min(failures))
            if len(pending) < 2 * workers:
                pending.append((pool.submit(_check_signatures, chunk), chunk))
                return
        # The pool is busy: the main process checks this chunk itself.
        failure = _check_signatures(chunk)
        if failure is not None:
            raise _Bad(*failure)

    def first_pool_failure() -> _Bad | None:
        collect(wait=True)
        return _Bad(*min(failures)) if failures else None

    position = 0
    try:
        try:
            for position, (idx, raw) in enumerate(rows):
                if idx != position:
                    raise _bad(
                        position,
                        f"is missing (the next stored index is {idx}); entries were deleted or reordered",
                    )
                e, public, part, signature = _inspect(idx, raw, keys)
                type_ = e["type"]
                jobs.append((idx, public, part, signature, type_))
                if pool is None or len(jobs) >= _CHUNK:
                    flush()
                if type_ == "run_requested":
                    runs_open[str(e["body"].get("run_id"))] = "requested"
                elif type_ in ("run_started", "run_finished"):
                    run_id = str(e["body"].get("run_id"))
                    if run_id not in runs_open:
                        raise _bad(idx, f"({type_}) is for run {run_id} that was never requested")
                    if runs_open[run_id] == "finished":
                        raise _bad(idx, f"({type_}): run {run_id} already has an outcome")
                    if type_ == "run_finished":
                        runs_open[run_id] = "finished"
                        runs_seen += 1
                leaves.append(sha256(b"\x00" + raw).digest())
                if progress is not None and position % 4096 == 0:
                    progress(position, total)
            flush()
        except _Bad as bad:
            # Name the first bad entry: a signature checked in the pool may
            # have failed at an earlier index.
            earlier = first_pool_failure() if pool is not None else None
            unsent = _check_signatures([j for j in jobs if j[0] < bad.index])
            if unsent is not None and (earlier is None or unsent[0] < earlier.index):
                earlier = _Bad(*unsent)
            raise earlier if earlier is not None and earlier.index < bad.index else bad from None
        if pool is not None:
            failure = first_pool_failure()
            if failure is not None:
                raise failure
    except _Bad as bad:
        raise LedgerCorrupt(bad.message) from None
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    size = len(leaves)
    if size != total:
        raise LedgerCorrupt(
            f"ledger holds {size} entries but reported {total}; it changed while being read or entries were lost"
        )
    if progress is not None:
        progress(size, total)
    tree = merkle.MerkleTree(leaves)
    del leaves
    _check_against_tree(tree, keys, checkpoints, cosignatures)
    against_report = check_against(tree, keys, against) if against is not None else None
    return VerifyReport(
        size=size,
        root=tree.root().hex(),
        signatures=size + len(checkpoints) + len(cosignatures),
        keys=len(keys.keys),
        checkpoints=len(checkpoints),
        cosignatures=len(cosignatures),
        runs=runs_seen,
        against=against_report,
        seconds=time.perf_counter() - started,
    )


def _check_against_tree(
    tree: merkle.MerkleTree,
    keys: KeyState,
    checkpoints: Sequence[Checkpoint],
    cosignatures: Sequence[Cosignature],
) -> None:
    for cp in checkpoints:
        check_checkpoint_signature(cp, keys)
    for cs in cosignatures:
        check_cosignature(cs, keys)
    check_equivocation(
        [(cp.size, cp.root, cp.signer) for cp in checkpoints]
        + [(cs.size, cs.root, cs.witness) for cs in cosignatures]
    )
    for size, root, what in [(cp.size, cp.root, "signed checkpoint") for cp in checkpoints] + [
        (cs.size, cs.root, "cosigned checkpoint") for cs in cosignatures
    ]:
        if size > tree.size:
            raise LedgerCorrupt(
                f"a {what} covers {size} entries but the ledger holds {tree.size}; the ledger was truncated"
            )
        if tree.root(size).hex() != root:
            raise LedgerCorrupt(
                f"root of the first {size} entries does not match the {what}; history was rewritten"
            )


def check_against(tree: merkle.MerkleTree, keys: KeyState, held: Checkpoint) -> dict[str, Any]:
    """Check that a checkpoint the auditor holds is a prefix of ``tree`` (RFC 9162 §2.1.4)."""
    check_checkpoint_signature(held, keys, what=f"the held checkpoint (size {held.size})")
    if held.size > tree.size:
        raise LedgerCorrupt(
            f"the held checkpoint covers {held.size} entries but the ledger holds only {tree.size}; "
            "the ledger was truncated or rolled back"
        )
    proof = tree.consistency_proof(held.size)
    try:
        merkle.verify_consistency(
            old_size=held.size,
            new_size=tree.size,
            old_root=held.root_bytes,
            new_root=tree.root(),
            proof=proof,
        )
    except LedgerCorrupt as exc:
        raise LedgerCorrupt(
            f"the ledger does not extend the held checkpoint of size {held.size}: {exc.message}; "
            "history was rewritten (a fork, or a restored backup with different entries)"
        ) from None
    return {"size": held.size, "root": held.root, "consistent": True, "proof_length": len(proof)}
