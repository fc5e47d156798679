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

Cost: one Ed25519 verify in OpenSSL is 60-80 µs; checking a chunk's
signatures as one batch (:mod:`opal.trust.ed25519_batch`) costs about 7 µs a
signature, and parsing and hashing an entry about 12 µs. On large ledgers,
pool workers take chunks of consecutive entries and check everything that
needs no earlier entry (rules 2 and 4, the leaf hashes); the main process
reads the rows and replays what the workers found, in index order, for the
rules that need earlier entries (1, 3, 5), about 3.5 µs an entry. A batch
that fails is re-checked one signature at a time with OpenSSL, so the entry
named is always the first one OpenSSL rejects.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, NamedTuple

from opal.canonical import parse_canonical
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
from opal.trust import ed25519_batch
from opal.trust.keys import first_invalid_signature, key_id_of, verify_signature

__all__ = [
    "KeyState",
    "check_against",
    "check_checkpoint_signature",
    "check_cosignature",
    "check_entry",
    "check_equivocation",
    "self_certified_keys",
    "verify_entries",
]

# Below this many entries a process pool costs more than it saves.
POOL_MIN_ENTRIES = 20_000
_CHUNK = 2048
_ENTRY_KEYS = {"v", "index", "type", "time", "actor", "actor_role", "body"}
_RUN_TYPES = ("run_requested", "run_started", "run_finished")
_MALFORMED = "is not a well-formed canonical entry"


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


class _Seen(NamedTuple):
    """One entry as a worker found it (rules 2 and 4), for the in-order rules 3 and 5."""

    type: str
    actor: str
    role: str
    detail: Any  # the body of a key entry, the run_id of a run entry, else None
    # (signed bytes, signature) when the worker did not hold the signer's key
    # and left the signature check to the in-order pass.
    unsigned: tuple[bytes, str] | None = None
    # (_ENCODING or _SIGNATURE, message): the worker rejects the entry, but
    # rules 3 come first for it, so the in-order pass decides which is named.
    fault: tuple[int, str] | None = None


# Where a worker's finding falls among one entry's checks: the shape (rule 2)
# before its key (rule 3), the envelope after it, the signature (rule 4) last.
_ENCODING, _SIGNATURE = 1, 2


class _Checked(NamedTuple):
    """A worker's answer for consecutive entries; it stops at the first it rejects."""

    seen: list[_Seen]
    leaves: list[bytes]  # of the entries in ``seen`` without a fault
    misshapen: tuple[int, str] | None  # (index, message): the entry after ``seen`` breaks rule 2


def _examine(
    idx: int, raw: bytes, publics: Mapping[str, bytes], names: dict[str, str]
) -> tuple[_Seen, tuple[bytes, str, bytes, str] | None]:
    """Rule 2 for one entry, and what rule 4 must check: everything that needs no
    earlier entry. Raises _Bad.

    Returns what was seen and, when the worker holds the signer's key, the
    signature check to make: ``(public key, domain, signed bytes, signature)``.
    ``names`` keeps one object per distinct type, actor and role string.
    """
    try:
        doc = parse_canonical(raw)
        if set(doc) != {"entry", "signature"} or set(doc["entry"]) != _ENTRY_KEYS:
            raise ValueError("unexpected fields")
        e, signature = doc["entry"], doc["signature"]
        if not isinstance(signature, str) or not isinstance(e["body"], dict):
            raise TypeError("wrong types")
        if not all(isinstance(e[k], str) for k in ("type", "time", "actor", "actor_role")):
            raise TypeError("wrong types")
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nesting too deep
        raise _bad(idx, _MALFORMED) from None
    if e["index"] != idx:
        raise _bad(idx, f"claims index {e['index']}; entries were moved")
    if e["v"] != ENTRY_VERSION:
        raise _bad(idx, f"has format version {e['v']}, expected {ENTRY_VERSION}")
    type_, actor, role, body = e["type"], e["actor"], e["actor_role"], e["body"]
    detail = (
        body
        if type_ in ("key_added", "key_revoked")
        else str(body.get("run_id"))
        if type_ in _RUN_TYPES
        else None
    )
    seen = _Seen(
        names.setdefault(type_, type_), names.setdefault(actor, actor), names.setdefault(role, role), detail
    )
    # A signature that is not ASCII cannot be base64, nor sliced out below.
    part = signed_part(raw, signature) if signature.isascii() else None
    if part is None:
        return seen._replace(fault=(_ENCODING, f"ledger entry {idx} {_MALFORMED}")), None
    public = publics.get(actor)
    if public is None:
        return seen._replace(unsigned=(part, signature)), None
    return seen, (public, ENTRY_DOMAIN, part, signature)


def _unverified(idx: int, type_: str) -> str:
    return f"ledger entry {idx} ({type_}): signature does not verify"


def _check_chunk(rows: Sequence[tuple[int, bytes]], publics: Mapping[str, bytes], batch: bool = True) -> _Checked:
    """Rules 2 and 4 and the leaf hashes of consecutive entries; runs in pool workers.

    ``publics`` maps key ids to raw public keys; an entry by a key not in it
    comes back with its signature unchecked (``_Seen.unsigned``). The
    signatures are checked together once the chunk is read
    (:func:`first_invalid_signature`), and the answer stops at the first
    entry that fails any check.
    """
    seen: list[_Seen] = []
    leaves: list[bytes] = []
    misshapen: tuple[int, str] | None = None
    checks: list[tuple[bytes, str, bytes, str]] = []
    checked_at: list[int] = []  # the position in ``seen`` of each of ``checks``
    sha256 = hashlib.sha256
    names: dict[str, str] = {}  # so that each is pickled once per chunk
    for idx, raw in rows:
        try:
            found, check = _examine(idx, raw, publics, names)
        except _Bad as bad:
            misshapen = (bad.index, bad.message)
            break
        seen.append(found)
        if found.fault is not None:
            break
        leaves.append(sha256(b"\x00" + raw).digest())
        if check is not None:
            checked_at.append(len(seen) - 1)
            checks.append(check)
    first = first_invalid_signature(checks, batch=batch)
    if first is not None:  # it comes before whatever stopped the loop
        position = checked_at[first]
        found = seen[position]
        seen[position:] = [found._replace(fault=(_SIGNATURE, _unverified(rows[position][0], found.type)))]
        del leaves[position:]
        misshapen = None
    return _Checked(seen, leaves, misshapen)


def _replay_keys(idx: int, seen: _Seen, keys: KeyState) -> None:
    """Rules 3 and 4 for an entry a worker passed on, in index order, updating ``keys``.

    The worker checked the signature against the key its actor id names; the
    key state decides here whether that key may sign at ``idx``. Raises _Bad.
    """
    type_, actor = seen.type, seen.actor
    if type_ == "key_added":
        try:
            keys.apply(idx, type_, seen.detail)
        except (ValueError, KeyError, TypeError) as exc:
            raise _bad(idx, f"(key_added) is malformed: {exc}") from None
    try:
        public = keys.signer(actor, at=idx, what=f"ledger entry {idx} ({type_})")
    except LedgerCorrupt as exc:
        raise _Bad(idx, exc.message) from None
    role = keys.keys[actor][1]
    if role != seen.role:
        raise _bad(idx, f"claims role {seen.role!r} but key {actor[:16]} has role {role!r}")
    fault = seen.fault
    if fault is not None and fault[0] == _ENCODING:
        raise _Bad(idx, fault[1])
    if type_ == "key_revoked":
        try:
            keys.apply(idx, type_, seen.detail)
        except (KeyError, TypeError):
            raise _bad(idx, "(key_revoked) is malformed") from None
    if fault is not None:
        raise _Bad(idx, fault[1])
    if seen.unsigned is not None:
        part, signature = seen.unsigned
        try:
            verify_signature(public, ENTRY_DOMAIN, part, signature)
        except TrustError:
            raise _Bad(idx, _unverified(idx, type_)) from None


def check_entry(idx: int, raw: bytes, keys: KeyState) -> LedgerEntry:
    """Check one entry on its own (rules 2-4), updating ``keys``; used offline on
    exports and receipts. Raises LedgerCorrupt."""
    checked = _check_chunk([(idx, raw)], {})
    try:
        if checked.misshapen is not None:
            raise _Bad(*checked.misshapen)
        _replay_keys(idx, checked.seen[0], keys)
    except _Bad as bad:
        raise LedgerCorrupt(bad.message) from None
    return LedgerEntry.parse(raw)


def self_certified_keys(raws: Iterable[bytes]) -> dict[str, bytes]:
    """key id -> raw public key, from entries that may be ``key_added`` ones.

    Only pairs where the id is the SHA-256 of the key are kept, so whatever
    the entries are, a worker never checks a signature against a key other
    than the one its signer's id names; anything else is skipped, not judged.
    """
    found: dict[str, bytes] = {}
    for raw in raws:
        try:
            body = json.loads(raw)["entry"]["body"]
            key_id, public = body["key_id"], bytes.fromhex(body["public_key"])
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
        if len(public) == 32 and key_id_of(public) == key_id:
            found[key_id] = public
    return found


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


class _InOrder:
    """The in-order pass: rules 1, 3 and 5 over what the workers found, chunk
    after chunk, and the Merkle tree of the leaves so far."""

    def __init__(self, publics: dict[str, bytes], progress: Callable[[int, int], None] | None, total: int) -> None:
        self.keys = KeyState()
        self.tree = merkle.MerkleTree()
        self.runs_open: dict[str, str] = {}
        self.runs = 0
        # Keys handed to the workers with each chunk; replaced, never mutated,
        # because a chunk already submitted may not be pickled yet.
        self.publics = publics
        self._progress = progress
        self._total = total

    def replay(self, first: int, checked: _Checked) -> None:
        """Take a worker's answer for the chunk starting at index ``first``; raise _Bad."""
        for idx, seen in enumerate(checked.seen, start=first):
            _replay_keys(idx, seen, self.keys)
            type_ = seen.type
            if type_ == "key_added":
                key_id = str(seen.detail["key_id"])
                if key_id not in self.publics:
                    self.publics = {**self.publics, key_id: bytes.fromhex(self.keys.keys[key_id][0])}
            elif type_ == "run_requested":
                self.runs_open[seen.detail] = "requested"
            elif type_ in ("run_started", "run_finished"):
                run_id = seen.detail
                if run_id not in self.runs_open:
                    raise _bad(idx, f"({type_}) is for run {run_id} that was never requested")
                if self.runs_open[run_id] == "finished":
                    raise _bad(idx, f"({type_}): run {run_id} already has an outcome")
                if type_ == "run_finished":
                    self.runs_open[run_id] = "finished"
                    self.runs += 1
        if checked.misshapen is not None:
            raise _Bad(*checked.misshapen)
        self.tree.extend(checked.leaves)
        if self._progress is not None:
            self._progress(self.tree.size, self._total)


def verify_entries(
    rows: Iterable[tuple[int, bytes]],
    checkpoints: Sequence[Checkpoint],
    *,
    cosignatures: Sequence[Cosignature] = (),
    against: Checkpoint | None = None,
    total: int | None = None,
    key_hints: Iterable[bytes] = (),
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch: bool = True,
) -> VerifyReport:
    """Check rules 1-7 (module docstring); raise LedgerCorrupt naming the first bad entry.

    ``rows`` are ``(index, stored bytes)`` in index order. ``key_hints``: the
    stored bytes of entries that are probably ``key_added`` ones, so workers
    can check signatures before the entries that add their keys are replayed
    (see :func:`self_certified_keys`; they decide nothing). ``workers``:
    processes checking entries (default: one per core for large ledgers,
    0 = check inline). ``batch``: check each chunk's signatures together
    (:mod:`opal.trust.ed25519_batch`) when the extension is built; False checks
    each one with OpenSSL.
    """
    started = time.perf_counter()
    if total is None:
        rows = list(rows)
        total = len(rows)
    if workers is None:
        workers = (os.cpu_count() or 1) if total >= POOL_MIN_ENTRIES else 0
    state = _InOrder(self_certified_keys(key_hints), progress, total)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) if workers > 0 else None
    # Chunks in flight, oldest first, with their rows in case a worker dies.
    pending: deque[tuple[Future[_Checked], list[tuple[int, bytes]]]] = deque()

    def finish_oldest() -> None:
        future, chunk = pending.popleft()
        try:
            checked = future.result()
        except BrokenProcessPool:  # a worker died (OOM, signal): check its chunk here
            checked = _check_chunk(chunk, state.publics, batch)
        state.replay(chunk[0][0], checked)

    def submit(chunk: list[tuple[int, bytes]]) -> None:
        if pool is not None:
            while len(pending) >= 2 * workers:
                finish_oldest()
            try:
                pending.append((pool.submit(_check_chunk, chunk, state.publics, batch), chunk))
                return
            except BrokenProcessPool:  # check the rest here, still in index order
                while pending:
                    finish_oldest()
        state.replay(chunk[0][0], _check_chunk(chunk, state.publics, batch))

    gap: _Bad | None = None
    try:
        chunk: list[tuple[int, bytes]] = []
        for position, (idx, raw) in enumerate(rows):
            if idx != position:
                # Named once every entry before it has been checked.
                gap = _bad(
                    position,
                    f"is missing (the next stored index is {idx}); entries were deleted or reordered",
                )
                break
            chunk.append((idx, raw))
            if len(chunk) == _CHUNK:
                submit(chunk)
                chunk = []
        if chunk:
            submit(chunk)
        while pending:
            finish_oldest()
        if gap is not None:
            raise gap
    except _Bad as bad:
        raise LedgerCorrupt(bad.message) from None
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    tree, keys = state.tree, state.keys
    size = tree.size
    if size != total:
        raise LedgerCorrupt(
            f"ledger holds {size} entries but reported {total}; it changed while being read or entries were lost"
        )
    if progress is not None:
        progress(size, total)
    _check_against_tree(tree, keys, checkpoints, cosignatures)
    against_report = check_against(tree, keys, against) if against is not None else None
    return VerifyReport(
        size=size,
        root=tree.root().hex(),
        signatures=size + len(checkpoints) + len(cosignatures),
        keys=len(keys.keys),
        checkpoints=len(checkpoints),
        cosignatures=len(cosignatures),
        runs=state.runs,
        against=against_report,
        seconds=time.perf_counter() - started,
        signature_check="batch" if batch and ed25519_batch.available() else "one-by-one",
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
