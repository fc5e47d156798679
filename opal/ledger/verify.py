"""Re-derive a ledger from its bytes: every leaf, the root, every signature, every role.

The rules a ledger must satisfy, checked in index order so the first bad
entry is the one named:

1. entries are numbered 0, 1, 2, … with no gap (deletion, reordering) and each
   entry names its own index (an entry moved elsewhere);
2. the stored bytes are canonical JSON (RFC 8785) of ``{"entry", "signature"}``,
   the signature has its one base64 spelling, and the database's index columns
   (type, subject, actor, time, leaf hash) equal the signed entry: they are an
   index, never an authority;
3. roles come only from the board: the first entry is a ``trust_policy`` signed
   by its board's threshold, each later one by the threshold of the old and
   the new board (TUF §5.3.4-5.3.5); a ``key_added`` entry is signed by a board
   key of the policy in force, never by the key it adds. Each entry type has
   the roles that may sign it (``SIGNERS``), and the signer must hold one of
   them under the policy in force, unrevoked;
4. the Ed25519 signature over the canonical ``entry`` verifies (OpenSSL);
5. run entries follow their lifecycle (requested → started → one outcome);
6. every stored checkpoint is signed by a log (operator) key and every
   cosignature by a witness key of the policy, and its root equals the root
   recomputed from the leaves; two signed checkpoints of the same size with
   different roots are equivocation;
7. a checkpoint the auditor holds (``against``, or the auditor's state file)
   is consistent with the ledger now: an RFC 9162 §2.1.4 consistency proof
   from it to the current tree verifies (rollback, truncation, rewrite, fork);
8. no privacy budget is overspent (:class:`Budget`): pools and totals from the
   signed dataset entries, charges from the signed run outcomes, each at most
   the ε its request named; online, the node's budget tables must say the same.

Cost: one Ed25519 verification in OpenSSL is 60-80 µs, parsing and hashing an
entry about 12 µs. Pool workers (one per core) take chunks of consecutive
entries and check everything that needs no earlier entry (rules 2 and 4, the
leaf hashes); the main process replays what they found, in index order, for
the rules that need earlier entries (1, 3, 5), a few µs an entry.
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
from opal.errors import BadInputError, LedgerCorrupt, TrustError
from opal.ledger import merkle
from opal.ledger.records import (
    ENTRY_DOMAIN,
    ENTRY_VERSION,
    Checkpoint,
    Cosignature,
    LedgerEntry,
    VerifyReport,
    signed_part,
)
from opal.trust.keys import (
    ROLES,
    check_public_key,
    decode_signature,
    first_invalid_signature,
    key_id_of,
    verify_note_signature,
    verify_signature,
)
from opal.trust.policy import TrustPolicy, verify_rotation

__all__ = [
    "SIGNERS",
    "Authority",
    "Budget",
    "budget_tables",
    "check_budget_tables",
    "RowSource",
    "check_against",
    "check_checkpoint_signature",
    "check_cosignature",
    "check_entry",
    "check_equivocation",
    "self_certified_keys",
    "verify_entries",
]

# Below this many entries a process pool costs more than it saves.
POOL_MIN_ENTRIES = 5_000
_CHUNK = 2048
_ENTRY_KEYS = {"v", "index", "type", "subject", "time", "actor", "actor_role", "body"}
_RUN_TYPES = ("run_requested", "run_started", "run_finished")
_MALFORMED = "is not a well-formed canonical entry"
_DETAIL_TYPES = ("trust_policy", "key_added", "key_revoked")
_AUTHORITY_TYPES = frozenset(_DETAIL_TYPES)  # the entries that change who holds which role

# Rule 3: who may sign which entry type (the roles of the policy in force).
# Any type not listed is the node's own record: its log (operator) keys sign it.
SIGNERS: Mapping[str, tuple[str, ...]] = {
    "trust_policy": ("board", "operator"),  # the body carries the board's threshold signatures
    "key_added": ("board",),
    "key_revoked": ("board", "operator"),
    "bundle_submitted": ("statistician",),
    "run_requested": ("statistician",),
    "bundle_approved": ("reviewer",),
    "bundle_rejected": ("reviewer",),
    "bundle_revoked": ("board",),
    "bundle_pinned": ("board",),
    "bundle_unpinned": ("board",),
}
_LOG_ROLES = ("operator",)


class Budget:
    """Rule 8: every dataset's privacy budget, replayed from signed content only.

    A pool opens with a ``dataset_registered`` entry (keyed by the content
    version, as the node keys it) or is joined by one naming
    ``budget_shared_with``; its total is the ``total_epsilon`` of the opening
    dataset's ``policy_changed``; a run's ``run_finished`` charges its
    ``epsilon_spent`` to the pool of the dataset its ``run_requested`` named.
    A charge above the ε requested, or a pool spent beyond its total, is an
    overspend, whatever the node's budget tables say (they are the operator's
    to edit). Amounts are whole micro-ε, as the node holds them.

    Runs on a dataset registered before the entries an audit reads (an offline
    export of a later range) are charged to nothing: there is no pool to hold
    them to.
    """

    def __init__(self) -> None:
        self.pool_of: dict[str, str] = {}  # dataset -> pool
        self.opened_by: dict[str, str] = {}  # pool -> the dataset that opened it
        self.total: dict[str, int | None] = {}  # pool -> micro-ε (None until its policy entry)
        self.spent: dict[str, int] = {}  # pool -> micro-ε
        # open run -> (dataset, micro-ε requested; None if the request names none)
        self.requested: dict[str, tuple[str, int | None]] = {}

    def registered(self, idx: int, detail: Any) -> None:
        dataset, version, shared = detail
        if shared is not None:
            pool = self.pool_of.get(str(shared))
            if pool is not None:  # (else opened before what this audit holds: nothing to hold it to)
                self.pool_of[str(dataset)] = pool
            return
        pool = str(version)
        if pool in self.total:
            raise _bad(idx, f"(dataset_registered) opens a second budget for content {pool[:12]} that has one")
        self.pool_of[str(dataset)] = pool
        self.opened_by[pool] = str(dataset)
        self.total[pool] = None
        self.spent[pool] = 0

    def policy(self, idx: int, detail: Any) -> None:
        dataset, total = detail
        pool = self.pool_of.get(str(dataset))
        if pool is None or self.opened_by.get(pool) != dataset:
            return  # a dataset sharing a pool keeps the pool's total
        try:
            self.total[pool] = _micro(total)
        except (BadInputError, TypeError, ValueError):
            raise _bad(idx, "(policy_changed) carries no valid total_epsilon") from None

    def request(self, run_id: str, detail: Any) -> None:
        _, dataset, epsilon = detail
        try:
            self.requested[run_id] = (str(dataset), _micro(epsilon))
        except (BadInputError, TypeError, ValueError):
            self.requested[run_id] = (str(dataset), None)

    def charge(self, idx: int, run_id: str, detail: Any) -> None:
        _, spent, outcome, cached = detail
        held = self.requested.pop(run_id, None)
        if held is None:
            return  # requested before this audit's first entry and state
        dataset, asked = held
        try:
            micro = _micro(spent) if spent else 0
        except (BadInputError, TypeError, ValueError):
            raise _bad(idx, f"(run_finished) of run {run_id} carries no valid epsilon_spent") from None
        if asked is not None and micro > asked:
            raise _bad(idx, f"(run_finished) charges run {run_id} ε={micro / 1e6:g}, more than the "
                            f"ε={asked / 1e6:g} it requested")
        if asked is not None and outcome == "released" and not cached and micro != asked:
            # a fresh release always spends what was reserved for it; less is a free query
            raise _bad(idx, f"(run_finished) releases run {run_id} for ε={micro / 1e6:g}, not the "
                            f"ε={asked / 1e6:g} it requested; only a release served from the cache is free")
        pool = self.pool_of.get(dataset)
        if pool is None:
            return
        self.spent[pool] += micro
        total = self.total.get(pool)
        if total is not None and self.spent[pool] > total:
            raise _bad(
                idx,
                f"(run_finished) overspends the privacy budget of dataset {dataset!r}: "
                f"ε={self.spent[pool] / 1e6:g} spent of a total of {total / 1e6:g}",
            )

    def to_state(self) -> dict[str, Any]:
        return {
            "pool_of": self.pool_of,
            "opened_by": self.opened_by,
            "total": self.total,
            "spent": self.spent,
            "requested": {k: list(v) for k, v in self.requested.items()},
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Budget:
        b = cls()
        b.pool_of = {str(k): str(v) for k, v in data.get("pool_of", {}).items()}
        b.opened_by = {str(k): str(v) for k, v in data.get("opened_by", {}).items()}
        b.total = {str(k): None if v is None else int(v) for k, v in data.get("total", {}).items()}
        b.spent = {str(k): int(v) for k, v in data.get("spent", {}).items()}
        b.requested = {
            str(k): (str(v[0]), None if v[1] is None else int(v[1])) for k, v in data.get("requested", {}).items()
        }
        return b


def budget_tables(tx: Any) -> tuple[dict[str, int], dict[str, str]]:
    """(pool -> spent micro-ε, dataset -> pool) as the node's tables hold them."""
    spent = {str(p): int(v) for p, v in tx.execute("SELECT pool, spent FROM budget").fetchall()}
    owners = {str(d): str(p) for d, p in tx.execute("SELECT dataset, pool FROM budget_owners").fetchall()}
    return spent, owners


def check_budget_tables(tables: tuple[dict[str, int], dict[str, str]], replay: dict[str, Any]) -> None:
    """The node's budget tables must say what the signed ledger says (rule 8 replayed every
    charge): a reset ``spent`` or a dataset moved to a fresh pool is named at once, before
    it lets anyone overspend."""
    spent, owners = tables
    for dataset, pool in sorted(replay.get("pool_of", {}).items()):
        if owners.get(dataset) != pool:
            raise LedgerCorrupt(
                f"the budget_owners table puts dataset {dataset!r} in another pool than its signed "
                "dataset_registered entry; the database was edited"
            )
    for pool, micro in sorted(replay.get("spent", {}).items()):
        if spent.get(pool) != micro:
            dataset = replay.get("opened_by", {}).get(pool, pool[:12])
            shown = "no row" if spent.get(pool) is None else f"ε={spent[pool] / 1e6:g} spent"
            raise LedgerCorrupt(
                f"the budget table says {shown} for dataset {dataset!r}, the signed run outcomes "
                f"ε={micro / 1e6:g}; the database was edited"
            )


def _micro(epsilon: Any) -> int:
    from opal.release.policy import to_micro

    return to_micro(float(epsilon), what="epsilon")


class _Bad(Exception):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(index, message)
        self.index = index
        self.message = message


def _bad(index: int, message: str) -> _Bad:
    return _Bad(index, f"ledger entry {index} {message}")


@dataclass
class Authority:
    """Who holds which role, replayed entry by entry from signed content only.

    ``policy`` is the board-signed trust policy in force; ``granted`` the keys a
    board key added by a ``key_added`` entry under it; ``revoked`` the index of
    each key's revocation; ``ever`` every role a key held at some point (for
    checkpoints and cosignatures, which are not entries).
    """

    policy: TrustPolicy | None = None
    publics: dict[str, str] = field(default_factory=dict)  # key id -> public key hex
    granted: dict[str, set[str]] = field(default_factory=dict)  # key id -> roles a board key gave it
    revoked: dict[str, int] = field(default_factory=dict)
    ever: dict[str, set[str]] = field(default_factory=dict)
    policy_at: int | None = None
    chain: list[Any] = field(default_factory=list)  # every policy envelope installed, in order
    budget: Budget = field(default_factory=Budget)  # rule 8, replayed alongside the roles

    @classmethod
    def from_policy(cls, policy: TrustPolicy) -> Authority:
        """An authority that starts from a policy the auditor holds (offline audits)."""
        auth = cls()
        auth._install(policy, -1)
        return auth

    def roles_of(self, key_id: str) -> set[str]:
        if self.policy is None:
            return set()
        return set(self.policy.roles_of(key_id)) | self.granted.get(key_id, set())

    def _install(self, policy: TrustPolicy, index: int) -> None:
        self.policy = policy
        self.policy_at = index
        self.publics.update(policy.keys)
        for key_id in policy.keys:
            self.ever.setdefault(key_id, set()).update(policy.roles_of(key_id))

    def usable(self, key_id: str, *, at: int, what: str, roles: Sequence[str]) -> str:
        """The public key (hex) of ``key_id`` if it holds one of ``roles`` at index ``at``; raise LedgerCorrupt."""
        label = self.policy.label if self.policy is not None else "no trust policy"
        if self.policy is None:
            raise LedgerCorrupt(
                f"{what} is signed before any board-signed trust policy; roles come only from the board"
            )
        when = self.revoked.get(key_id)
        if when is not None and when < at:
            raise LedgerCorrupt(f"{what} is signed by key {key_id[:16]}, revoked at entry {when}")
        held = self.roles_of(key_id)
        if not held & set(roles):
            raise LedgerCorrupt(
                f"{what} is signed by key {key_id[:16]} holding {', '.join(sorted(held)) or 'no role'} in the "
                f"{label}; only a {' or '.join(roles)} key may sign it"
            )
        return self.publics[key_id]

    def ever_held(self, key_id: str, role: str, *, before: int, what: str) -> str:
        """For checkpoints and cosignatures: ``key_id`` held ``role`` and was not revoked before ``before``."""
        if role not in self.ever.get(key_id, set()):
            raise LedgerCorrupt(
                f"{what} is signed by key {key_id[:16]}, which no board-signed trust policy names as a {role} key"
            )
        when = self.revoked.get(key_id)
        if when is not None and when < before:
            raise LedgerCorrupt(f"{what} is signed by key {key_id[:16]}, revoked at entry {when}")
        return self.publics[key_id]

    def admit(
        self, idx: int, type_: str, actor: str, claimed: str, detail: Any, *, cancelled: bool = False
    ) -> str:
        """Rule 3 for one entry; update the state; return the signer's public key hex. Raises _Bad."""
        what = f"ledger entry {idx} ({type_})"
        if type_ == "trust_policy":
            try:
                envelope = detail["policy"]
                new = verify_rotation(self.policy, envelope)
            except (TrustError, BadInputError) as exc:
                raise _bad(idx, f"(trust_policy) is not a board-signed next policy version: {exc.message}") from None
            except (KeyError, TypeError):
                raise _bad(idx, "(trust_policy) carries no policy document") from None
            if detail.get("version") != new.version:
                raise _bad(idx, f"(trust_policy) says version {detail.get('version')} but carries v{new.version}")
            # recorded by a board or log key of the new policy or of the one it replaces
            held = set(new.roles_of(actor)) | self.roles_of(actor)
            if not held & set(SIGNERS["trust_policy"]):
                raise _bad(idx, "(trust_policy) is recorded by a key that is neither board nor operator (new or old)")
            if claimed not in held:
                raise _bad(idx, f"claims role {claimed!r} but key {actor[:16]} holds {', '.join(sorted(held))}")
            self._install(new, idx)
            self.chain.append(envelope)
            return self.publics[actor]
        try:
            roles = ("operator", "statistician") if cancelled else SIGNERS.get(type_, _LOG_ROLES)
            public = self.usable(actor, at=idx, what=what, roles=roles)
        except LedgerCorrupt as exc:
            raise _Bad(idx, exc.message) from None
        held = self.roles_of(actor)
        if claimed not in held:
            raise _bad(idx, f"claims role {claimed!r} but key {actor[:16]} holds {', '.join(sorted(held))}")
        if type_ == "key_added":
            try:
                key_id, hex_key, role = str(detail["key_id"]), str(detail["public_key"]), str(detail["role"])
                raw = bytes.fromhex(hex_key)
            except (KeyError, TypeError, ValueError):
                raise _bad(idx, "(key_added) is malformed") from None
            if key_id == actor:
                raise _bad(idx, "(key_added) is signed by the key it adds; a key never vouches for itself")
            if key_id_of(raw) != key_id:
                raise _bad(idx, "(key_added) key_id is not the SHA-256 of the public key")
            try:
                check_public_key(raw, what="the added key")
            except TrustError as exc:
                raise _bad(idx, f"(key_added): {exc.message}") from None
            if role not in ROLES:
                raise _bad(idx, f"(key_added) names unknown role {role!r}")
            if self.publics.get(key_id, hex_key) != hex_key:
                raise _bad(idx, "(key_added) gives a known key id another public key")
            self.publics[key_id] = hex_key
            self.granted.setdefault(key_id, set()).add(role)
            self.ever.setdefault(key_id, set()).add(role)
        elif type_ == "key_revoked":
            try:
                self.revoked.setdefault(str(detail["key_id"]), idx)
            except (KeyError, TypeError):
                raise _bad(idx, "(key_revoked) is malformed") from None
        return public

    def to_dict(self) -> dict[str, Any]:
        return {
            k: {"public_key": p, "roles": sorted(self.ever.get(k, set())), "revoked_at": self.revoked.get(k)}
            for k, p in self.publics.items()
        }

    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume the in-order replay later (the auditor's state file)."""
        return {
            "chain": self.chain,
            "policy_at": self.policy_at,
            "publics": self.publics,
            "granted": {k: sorted(v) for k, v in self.granted.items()},
            "revoked": self.revoked,
            "ever": {k: sorted(v) for k, v in self.ever.items()},
            "budget": self.budget.to_state(),
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Authority:
        """Rebuild from :meth:`to_state` (re-checking the policy chain's board signatures)."""
        auth = cls()
        policy: TrustPolicy | None = None
        for envelope in data.get("chain", []):
            policy = verify_rotation(policy, envelope)
        auth.policy = policy
        auth.chain = list(data.get("chain", []))
        auth.policy_at = data.get("policy_at")
        auth.publics = {str(k): str(v) for k, v in data.get("publics", {}).items()}
        auth.granted = {str(k): set(v) for k, v in data.get("granted", {}).items()}
        auth.revoked = {str(k): int(v) for k, v in data.get("revoked", {}).items()}
        auth.ever = {str(k): set(v) for k, v in data.get("ever", {}).items()}
        auth.budget = Budget.from_state(data.get("budget", {}))
        return auth


class _Seen(NamedTuple):
    """One entry as a worker found it (rules 2 and 4), for the in-order rules 3 and 5."""

    type: str
    actor: str
    role: str
    detail: Any  # the body of a policy or key entry; for run, dataset and policy entries the
    # fields the in-order rules need (see _examine); else None
    # (signed bytes, signature) when the worker did not hold the signer's key
    # and left the signature check to the in-order pass.
    unsigned: tuple[bytes, str] | None = None
    # (_ENCODING or _SIGNATURE, message): the worker rejects the entry, but
    # rule 3 comes first for it, so the in-order pass decides which is named.
    fault: tuple[int, str] | None = None
    # the stored leaf_hash column differs from the bytes: named after the signature
    index_fault: str | None = None
    # a requester may sign the outcome "cancelled" of its own queued run (opal runs cancel)
    cancelled: bool = False


_ENCODING, _SIGNATURE = 1, 2

# (type, subject, actor, time, leaf hash) as the database's index columns hold them
Columns = tuple[Any, Any, Any, Any, Any]


class _Checked(NamedTuple):
    """A worker's answer for consecutive entries; it stops at the first it rejects.

    ``seen`` holds each :class:`_Seen` as a plain tuple (a named tuple costs a
    Python call each to unpickle, which the main process would pay for every entry).
    """

    seen: list[tuple[Any, ...]]
    leaves: bytes  # the 32-byte leaf hashes of the entries in ``seen`` without a fault, joined
    misshapen: tuple[int, str] | None  # (index, message): the entry after ``seen`` breaks rule 2


def _check_columns(idx: int, e: Mapping[str, Any], leaf: bytes, columns: Columns, names: Sequence[str]) -> None:
    stored = dict(zip(("type", "subject", "actor", "time", "leaf_hash"), columns, strict=True))
    signed = {"type": e["type"], "subject": e["subject"], "actor": e["actor"], "time": e["time"], "leaf_hash": leaf}
    for name in names:
        value = stored[name]
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value)
        if value != signed[name]:
            shown = value.hex()[:16] if isinstance(value, bytes) else repr(value)
            expected = signed[name].hex()[:16] if isinstance(signed[name], bytes) else repr(signed[name])
            raise _bad(
                idx,
                f"has {name} column {shown} but its signed entry says {expected}; "
                "the database index was edited",
            )


def _examine(
    idx: int, raw: bytes, columns: Columns | None, publics: Mapping[str, bytes], names: dict[str, str]
) -> tuple[_Seen, tuple[bytes, str, bytes, bytes] | None, bytes]:
    """Rule 2 for one entry, and what rule 4 must check: everything that needs no
    earlier entry. Raises _Bad.

    Returns what was seen, the signature check to make when the worker holds the
    signer's key ``(public key, domain, signed bytes, signature)``, and the leaf.
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
        if e["subject"] is not None and not isinstance(e["subject"], str):
            raise TypeError("wrong types")
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nesting too deep
        raise _bad(idx, _MALFORMED) from None
    if e["index"] != idx:
        raise _bad(idx, f"claims index {e['index']}; entries were moved")
    if e["v"] != ENTRY_VERSION:
        raise _bad(idx, f"has format version {e['v']}, expected {ENTRY_VERSION}")
    leaf = hashlib.sha256(b"\x00" + raw).digest()
    index_fault = None
    if columns is not None:
        if tuple(columns[:4]) != (e["type"], e["subject"], e["actor"], e["time"]):
            _check_columns(idx, e, leaf, columns, ("type", "subject", "actor", "time"))
        if bytes(columns[4]) != leaf:
            try:
                _check_columns(idx, e, leaf, columns, ("leaf_hash",))
            except _Bad as bad:
                index_fault = bad.message
    type_, actor, role, body = e["type"], e["actor"], e["actor_role"], e["body"]
    if type_ in _DETAIL_TYPES:
        detail: Any = body
    elif type_ == "run_requested":
        detail = (str(body.get("run_id")), body.get("dataset"), body.get("epsilon"))
    elif type_ == "run_finished":
        detail = (str(body.get("run_id")), body.get("epsilon_spent"), body.get("outcome"), "cached_from" in body)
    elif type_ == "run_started":
        detail = (str(body.get("run_id")),)
    elif type_ == "dataset_registered":
        detail = (body.get("dataset"), body.get("version"), body.get("budget_shared_with"))
    elif type_ == "policy_changed":
        policy = body.get("policy")
        detail = (body.get("dataset"), policy.get("total_epsilon") if isinstance(policy, dict) else None)
    else:
        detail = None
    seen = _Seen(
        names.setdefault(type_, type_),
        names.setdefault(actor, actor),
        names.setdefault(role, role),
        detail,
        index_fault=index_fault,
        cancelled=type_ == "run_finished" and body.get("outcome") == "cancelled",
    )
    part = signed_part(raw, signature) if signature.isascii() else None
    if part is None:
        return seen._replace(fault=(_ENCODING, f"ledger entry {idx} {_MALFORMED}")), None, leaf
    try:
        decoded = decode_signature(signature)
    except TrustError as exc:
        return seen._replace(fault=(_ENCODING, f"ledger entry {idx} ({type_}): {exc.message}")), None, leaf
    public = publics.get(actor)
    if public is None:
        return seen._replace(unsigned=(part, signature)), None, leaf
    return seen, (public, ENTRY_DOMAIN, part, decoded), leaf


def _unverified(idx: int, type_: str) -> str:
    return f"ledger entry {idx} ({type_}): signature does not verify"


Row = tuple[int, bytes] | tuple[int, bytes, Columns]


def _check_chunk(rows: Sequence[Row], publics: Mapping[str, bytes]) -> _Checked:
    """Rules 2 and 4 and the leaf hashes of consecutive entries; runs in pool workers.

    ``publics`` maps key ids to raw public keys; an entry by a key not in it
    comes back with its signature unchecked (``_Seen.unsigned``). The answer
    stops at the first entry that fails any check.
    """
    seen: list[_Seen] = []
    leaves: list[bytes] = []
    misshapen: tuple[int, str] | None = None
    checks: list[tuple[bytes, str, bytes, bytes]] = []
    checked_at: list[int] = []  # the position in ``seen`` of each of ``checks``
    names: dict[str, str] = {}  # so that each is pickled once per chunk
    for row in rows:
        idx, raw = row[0], row[1]
        columns = row[2] if len(row) > 2 else None
        try:
            found, check, leaf = _examine(idx, raw, columns, publics, names)
        except _Bad as bad:
            misshapen = (bad.index, bad.message)
            break
        seen.append(found)
        if found.fault is not None:
            break
        leaves.append(leaf)
        if check is not None:
            checked_at.append(len(seen) - 1)
            checks.append(check)
    first = first_invalid_signature(checks)
    if first is not None:  # it comes before whatever stopped the loop
        position = checked_at[first]
        found = seen[position]
        seen[position:] = [found._replace(fault=(_SIGNATURE, _unverified(rows[position][0], found.type)))]
        del leaves[position:]
        misshapen = None
    return _Checked([tuple(s) for s in seen], b"".join(leaves), misshapen)


@dataclass(frozen=True)
class RowSource:
    """Where pool workers read their own rows (so the main process neither reads nor pickles
    entries): a SQLite file or a PostgreSQL URL."""

    path: str | None
    url: str | None


_OPEN: dict[tuple[int, RowSource], Any] = {}


def _fetch(source: RowSource, start: int, stop: int) -> list[Row]:
    from pathlib import Path

    from opal.db import Database

    key = (os.getpid(), source)
    db = _OPEN.get(key)
    if db is None:
        db = _OPEN[key] = Database(Path(source.path) if source.path else None, url=source.url or "")
    return [
        (r[0], bytes(r[1]), r[2:])
        for r in db.tuples(
            "SELECT idx, entry, type, subject, actor, time, leaf_hash FROM ledger WHERE idx >= ? AND idx < ? "
            "ORDER BY idx",
            (start, stop),
        )
    ]


def _check_range(source: RowSource, start: int, stop: int, publics: Mapping[str, bytes]) -> _Checked:
    """A worker reads entries ``start`` … ``stop - 1`` itself and checks them (rules 1, 2, 4)."""
    rows = _fetch(source, start, stop)
    missing: int | None = None
    for position, row in enumerate(rows, start=start):
        if row[0] != position:
            missing, found = position, row[0]
            rows = rows[: position - start]
            break
    else:
        if len(rows) < stop - start:
            missing, found = start + len(rows), None
    checked = _check_chunk(rows, publics) if rows else _Checked([], b"", None)
    faulted = checked.misshapen is not None or len(checked.seen) < len(rows) or any(
        _Seen._make(s).fault is not None for s in checked.seen
    )
    if missing is None or faulted:
        return checked
    if found is None:
        later = _fetch(source, missing, missing + 1)
        found = later[0][0] if later else None
    where = f"the next stored index is {found}" if found is not None else "no entry follows"
    message = f"ledger entry {missing} is missing ({where}); entries were deleted or reordered"
    return checked._replace(misshapen=(missing, message))


def _replay(idx: int, seen: _Seen, auth: Authority) -> None:
    """Rules 3 and 4 for an entry a worker passed on, in index order, updating ``auth``. Raises _Bad."""
    fault = seen.fault
    public = auth.admit(idx, seen.type, seen.actor, seen.role, seen.detail, cancelled=seen.cancelled)
    if fault is not None:
        raise _Bad(idx, fault[1])
    if seen.unsigned is not None:
        part, signature = seen.unsigned
        try:
            verify_signature(public, ENTRY_DOMAIN, part, signature)
        except TrustError:
            raise _Bad(idx, _unverified(idx, seen.type)) from None
    if seen.index_fault is not None:
        raise _Bad(idx, seen.index_fault)


def check_entry(idx: int, raw: bytes, auth: Authority) -> LedgerEntry:
    """Check one entry on its own (rules 2-4), updating ``auth``; used offline on
    exports and receipts. Raises LedgerCorrupt."""
    checked = _check_chunk([(idx, raw)], {})
    try:
        if checked.misshapen is not None:
            raise _Bad(*checked.misshapen)
        _replay(idx, _Seen._make(checked.seen[0]), auth)
    except _Bad as bad:
        raise LedgerCorrupt(bad.message) from None
    return LedgerEntry.parse(raw)


def self_certified_keys(raws: Iterable[bytes]) -> dict[str, bytes]:
    """key id -> raw public key, from entries that may be ``key_added`` or ``trust_policy`` ones.

    Only pairs where the id is the SHA-256 of the key are kept, so whatever
    the entries are, a worker never checks a signature against a key other
    than the one its signer's id names; they decide nothing (rule 3 does).
    """
    found: dict[str, bytes] = {}
    for raw in raws:
        try:
            body = json.loads(raw)["entry"]["body"]
            pairs = (
                [(k, v["public_key"]) for k, v in body["policy"]["signed"]["keys"].items()]
                if "policy" in body
                else [(body["key_id"], body["public_key"])]
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue
        for key_id, public_hex in pairs:
            try:
                public = bytes.fromhex(str(public_hex))
            except ValueError:
                continue
            if len(public) == 32 and key_id_of(public) == key_id:
                found[str(key_id)] = public
    return found


def _mp_context() -> Any:
    # fork: workers need no re-import of the caller's __main__ (spawn would
    # re-run an unguarded script) and start in milliseconds. They only call
    # into cryptography, so no lock held by another thread at fork matters.
    try:
        return get_context("fork")
    except ValueError:  # pragma: no cover - platforms without fork
        return get_context("spawn")


def check_checkpoint_signature(cp: Checkpoint, auth: Authority, *, what: str | None = None) -> None:
    what = what or f"checkpoint at size {cp.size}"
    public = auth.ever_held(cp.signer, "operator", before=cp.size, what=what)
    try:
        verify_note_signature(public, cp.body(), cp.signature, what="checkpoint")
    except TrustError:
        raise LedgerCorrupt(f"{what}: signature by {cp.signer[:16]} does not verify") from None


def check_cosignature(cs: Cosignature, auth: Authority) -> None:
    what = f"cosignature of size {cs.size} by witness {cs.witness[:16]}"
    public = auth.ever_held(cs.witness, "witness", before=cs.size, what=what)
    try:
        verify_note_signature(public, cs.message(), cs.signature, what="cosignature")
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

    def __init__(
        self,
        publics: dict[str, bytes],
        progress: Callable[[int, int], None] | None,
        total: int,
        *,
        start: int = 0,
        tree: merkle.MerkleTree | None = None,
        auth: Authority | None = None,
        runs_open: Mapping[str, str] | None = None,
        prefix: Callable[[], merkle.MerkleTree] | None = None,
    ) -> None:
        self.auth = auth or Authority()
        self.tree = tree or merkle.MerkleTree()
        # Builds (and proves) the tree of the entries before ``start``; called by
        # ready(), which the pool path calls while the workers check new entries.
        self._prefix = prefix
        self.runs_open: dict[str, str] = dict(runs_open or {})
        self.runs = 0
        self.start = start
        # Keys handed to the workers with each chunk; replaced, never mutated,
        # because a chunk already submitted may not be pickled yet.
        self.publics = publics
        self._progress = progress
        self._total = total
        # (type, actor, claimed role, cancelled) already admitted by rule 3 under
        # the authority as it is now; emptied whenever an entry changes it.
        self._admitted: set[tuple[str, str, str, bool]] = set()

    def ready(self) -> None:
        """Build the tree of the entries verified before, if not done yet."""
        if self._prefix is not None:
            prefix, self._prefix = self._prefix, None
            self.tree = prefix()

    def replay(self, first: int, checked: _Checked) -> None:
        """Take a worker's answer for the chunk starting at index ``first``; raise _Bad."""
        self.ready()
        admitted = self._admitted
        for idx, item in enumerate(checked.seen, start=first):
            type_, actor, role, detail, unsigned, fault, index_fault, cancelled = item
            # Most entries are the node's own records by one log key: once rule 3
            # admitted a (type, signer, role), the same answer holds until a
            # policy, key or revocation entry changes the authority.
            if not (
                fault is None
                and unsigned is None
                and index_fault is None
                and (type_, actor, role, cancelled) in admitted
            ):
                _replay(idx, _Seen._make(item), self.auth)
                if type_ in _AUTHORITY_TYPES:
                    admitted.clear()
                else:
                    admitted.add((type_, actor, role, cancelled))
            if type_ in ("key_added", "trust_policy"):
                fresh = {k: bytes.fromhex(v) for k, v in self.auth.publics.items() if k not in self.publics}
                if fresh:
                    self.publics = {**self.publics, **fresh}
            elif type_ == "run_requested":
                self.runs_open[detail[0]] = f"requested:{actor}"
                self.auth.budget.request(detail[0], detail)
            elif type_ == "dataset_registered":
                self.auth.budget.registered(idx, detail)
            elif type_ == "policy_changed":
                self.auth.budget.policy(idx, detail)
            elif type_ in ("run_started", "run_finished"):
                run_id = detail[0]
                if run_id not in self.runs_open:
                    # an incremental audit holds only the runs still open at its last checkpoint
                    before = " (or finished before your last audit)" if self.start else ""
                    raise _bad(idx, f"({type_}) is for run {run_id} that was never requested{before}")
                if self.runs_open[run_id] == "finished":
                    raise _bad(idx, f"({type_}): run {run_id} already has an outcome")
                # A statistician cancels only a run it requested ("requested" alone: an
                # audit state written before requesters were kept).
                requester = self.runs_open[run_id].partition(":")[2]
                if cancelled and role == "statistician" and requester not in ("", actor):
                    raise _bad(
                        idx,
                        f"(run_finished) cancels run {run_id} for key {actor[:16]}, which did not request it; "
                        "only the requester or the node may cancel a run",
                    )
                if type_ == "run_finished":
                    self.runs_open[run_id] = "finished"
                    self.runs += 1
                    self.auth.budget.charge(idx, run_id, detail)
        if checked.misshapen is not None:
            raise _Bad(*checked.misshapen)
        self.tree.extend_joined(checked.leaves)
        if self._progress is not None:
            self._progress(self.tree.size, self._total)


def verify_entries(
    rows: Iterable[Row],
    checkpoints: Sequence[Checkpoint],
    *,
    cosignatures: Sequence[Cosignature] = (),
    against: Checkpoint | None = None,
    total: int | None = None,
    key_hints: Iterable[bytes] = (),
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    start: int = 0,
    tree: merkle.MerkleTree | None = None,
    auth: Authority | None = None,
    runs_open: Mapping[str, str] | None = None,
    resume: dict[str, Any] | None = None,
    held: tuple[int, str, str] | None = None,
    source: RowSource | None = None,
    prefix: Callable[[], merkle.MerkleTree] | None = None,
) -> VerifyReport:
    """Check rules 1-8 (module docstring); raise LedgerCorrupt naming the first bad entry.

    ``rows`` are ``(index, stored bytes[, index columns])`` in index order from
    ``start``. ``key_hints``: the stored bytes of entries that are probably
    ``key_added`` or ``trust_policy`` ones, so workers can check signatures
    before the entries that add their keys are replayed (see
    :func:`self_certified_keys`; they decide nothing). ``workers``: processes
    checking entries (default: one per core for large ledgers, 0 = inline).
    ``start``, ``tree``, ``auth``: resume an audit whose first ``start``
    entries were verified before (the auditor's state): the tree of their
    leaves, the authority replayed over them and the runs still open.
    ``resume``: filled with what a later audit needs to resume from here.
    ``held``: ``(size, root hex, label)`` of a tree the auditor verified
    before; the ledger must extend it (a full re-audit from a held state).
    ``source``: with a pool, workers read their rows from there (``rows`` is
    then not read at all). ``prefix``: instead of ``tree``, a callable that
    builds and proves it (raising LedgerCorrupt); with a pool it runs while the
    workers check the first new entries.
    """
    started = time.perf_counter()
    if total is None:
        rows = list(rows)
        total = start + len(rows)
    todo = total - start
    if workers is None:
        workers = (os.cpu_count() or 1) if todo >= POOL_MIN_ENTRIES else 0
    hints = self_certified_keys(key_hints)
    if auth is not None:
        hints.update({k: bytes.fromhex(v) for k, v in auth.publics.items()})
    state = _InOrder(
        hints, progress, total, start=start, tree=tree, auth=auth, runs_open=runs_open, prefix=prefix
    )
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) if workers > 0 else None
    # Chunks in flight, oldest first, with their rows in case a worker dies.
    pending: deque[tuple[Future[_Checked], list[Row]]] = deque()

    def finish_oldest() -> None:
        state.ready()  # the workers have chunks to check meanwhile
        future, chunk = pending.popleft()
        try:
            checked = future.result()
        except BrokenProcessPool:  # a worker died (OOM, signal): check its chunk here
            checked = _check_chunk(chunk, state.publics)
        state.replay(chunk[0][0], checked)

    def submit(chunk: list[Row]) -> None:
        if pool is not None:
            while len(pending) >= 2 * workers:
                finish_oldest()
            try:
                pending.append((pool.submit(_check_chunk, chunk, state.publics), chunk))
                return
            except BrokenProcessPool:  # check the rest here, still in index order
                while pending:
                    finish_oldest()
        state.replay(chunk[0][0], _check_chunk(chunk, state.publics))

    def finish_oldest_range() -> None:
        state.ready()  # the workers have ranges to check meanwhile
        future, (a, b) = ranges.popleft()
        try:
            checked = future.result()
        except BrokenProcessPool:  # a worker died (OOM, signal): check its range here
            assert source is not None
            checked = _check_range(source, a, b, state.publics)
        state.replay(a, checked)

    ranges: deque[tuple[Future[_Checked], tuple[int, int]]] = deque()
    if pool is not None and source is not None:
        try:
            for a in range(start, total, _CHUNK):
                b = min(total, a + _CHUNK)
                while len(ranges) >= 2 * workers:
                    finish_oldest_range()
                try:
                    ranges.append((pool.submit(_check_range, source, a, b, state.publics), (a, b)))
                except BrokenProcessPool:
                    while ranges:
                        finish_oldest_range()
                    state.replay(a, _check_range(source, a, b, state.publics))
            while ranges:
                finish_oldest_range()
        except _Bad as bad:
            raise LedgerCorrupt(bad.message) from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        rows = ()
    gap: _Bad | None = None
    try:
        chunk: list[Row] = []
        for position, row in enumerate(rows, start=start):
            idx = row[0]
            if idx != position:
                gap = _bad(
                    position,
                    f"is missing (the next stored index is {idx}); entries were deleted or reordered",
                )
                break
            chunk.append(row)
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
    state.ready()
    tree, auth_ = state.tree, state.auth
    size = tree.size
    if size != total:
        raise LedgerCorrupt(
            f"ledger holds {size} entries but reported {total}; it changed while being read or entries were lost"
        )
    if progress is not None:
        progress(size, total)
    if held is not None:
        held_size, held_root, label = held
        if held_size > size:
            raise LedgerCorrupt(
                f"the ledger holds {size} entries, fewer than {label} in your audit state; "
                "it was truncated or rolled back to an older copy"
            )
        if tree.root(held_size).hex() != held_root:
            raise LedgerCorrupt(
                f"the ledger's first {held_size} entries do not match {label} in your audit state; "
                "history was rewritten (a fork, or a restored copy with different entries)"
            )
    _check_against_tree(tree, auth_, checkpoints, cosignatures)
    against_report = check_against(tree, auth_, against) if against is not None else None
    if resume is not None:
        resume.update(
            authority=auth_.to_state(),
            runs_open={k: v for k, v in state.runs_open.items() if v != "finished"},
        )
    return VerifyReport(
        size=size,
        root=tree.root().hex(),
        signatures=todo + len(checkpoints) + len(cosignatures),
        keys=len(auth_.publics),
        checkpoints=len(checkpoints),
        cosignatures=len(cosignatures),
        runs=state.runs,
        against=against_report,
        seconds=time.perf_counter() - started,
        workers=workers,
    )


def _check_against_tree(
    tree: merkle.MerkleTree,
    auth: Authority,
    checkpoints: Sequence[Checkpoint],
    cosignatures: Sequence[Cosignature],
) -> None:
    for cp in checkpoints:
        check_checkpoint_signature(cp, auth)
    for cs in cosignatures:
        check_cosignature(cs, auth)
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


def check_against(tree: merkle.MerkleTree, auth: Authority | None, held: Checkpoint) -> dict[str, Any]:
    """Check that a checkpoint the auditor holds is a prefix of ``tree`` (RFC 9162 §2.1.4).

    ``auth`` None: the auditor verified the held checkpoint when it was recorded.
    """
    if auth is not None:
        check_checkpoint_signature(held, auth, what=f"the held checkpoint (size {held.size})")
    if held.size > tree.size:
        raise LedgerCorrupt(
            f"the held checkpoint of size {held.size} (root {held.root[:16]}…) covers more entries than the "
            f"ledger holds ({tree.size}); the ledger was truncated or rolled back"
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
            f"the ledger does not extend the held checkpoint of size {held.size} (root {held.root[:16]}…): "
            f"{exc.message}; history was rewritten (a fork, or a restored backup with different entries)"
        ) from None
    return {"size": held.size, "root": held.root, "consistent": True, "proof_length": len(proof)}
