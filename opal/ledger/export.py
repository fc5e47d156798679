"""Offline audit: export a range of entries with proofs, verify it with no database.

JSON Lines, one object per line:

1. ``{"kind": "checkpoint", "format", "origin", "range": [A, B], "checkpoint",
   "cosignatures", "leaves"}`` — the signed checkpoint every proof leads to,
   and every leaf hash it covers (base64 of the concatenated 32-byte hashes),
   so an auditor can prove consistency from any earlier size it holds;
2. ``{"kind": "key", "index", "entry", "proof"}`` — every ``trust_policy``,
   ``key_added`` and ``key_revoked`` entry the checkpoint covers, so roles and
   signatures can be checked;
3. ``{"kind": "entry", "index", "entry", "proof"}`` — entries A … B-1.

With the board-signed trust policy (``--policy``) the auditor takes the log
keys, the witness keys and the witness threshold from it, not from the file.

``entry`` is the stored bytes as a string (exact; its leaf hash is
recomputed), ``proof`` the RFC 9162 inclusion proof (hex) in the checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opal.canonical import canonical_json, sha256_hex
from opal.errors import BadInputError, LedgerCorrupt, TrustError
from opal.ledger import merkle
from opal.ledger.audit_state import AuditState
from opal.ledger.log import Ledger
from opal.ledger.records import Checkpoint, Cosignature
from opal.ledger.verify import (
    Authority,
    check_checkpoint_signature,
    check_cosignature,
    check_entry,
    check_equivocation,
)
from opal.trust.keys import verify_note_signature
from opal.trust.policy import TrustPolicy

if TYPE_CHECKING:
    from opal.trust.keyring import Signer

__all__ = [
    "FORMAT",
    "check_proven_item",
    "export_range",
    "parse_range",
    "proven_item",
    "verify_export",
]

FORMAT = "opal-ledger-export/1"


def parse_range(text: str, size: int) -> tuple[int, int]:
    """``A:B`` (B exclusive; either may be empty) → ``(A, B)`` within ``[0, size]``."""
    try:
        a_text, b_text = text.split(":", 1)
        a = int(a_text) if a_text.strip() else 0
        b = int(b_text) if b_text.strip() else size
    except ValueError:
        raise BadInputError(f"--range must be A:B (entries A to B-1), found {text!r}") from None
    if not 0 <= a <= b <= size:
        raise BadInputError(f"--range {text} must satisfy 0 <= A <= B <= {size} (the ledger size)")
    return a, b


def proven_item(
    kind: str, index: int, raw: bytes, tree: merkle.MerkleTree, size: int
) -> dict[str, Any]:
    return {
        "kind": kind,
        "index": index,
        "entry": raw.decode("utf-8"),
        "proof": [p.hex() for p in tree.inclusion_proof(index, size)],
    }


def check_proven_item(item: dict[str, Any], cp: Checkpoint) -> tuple[int, bytes]:
    """Check an item's inclusion proof in ``cp``; return ``(index, stored bytes)``. Raises LedgerCorrupt."""
    try:
        index = int(item["index"])
        raw = str(item["entry"]).encode("utf-8")
        proof = [bytes.fromhex(p) for p in item["proof"]]
    except (KeyError, TypeError, ValueError):
        raise LedgerCorrupt("a proven entry must have index, entry and a hex proof") from None
    try:
        merkle.verify_inclusion(
            leaf_hash=merkle.leaf_hash(raw),
            index=index,
            size=cp.size,
            proof=proof,
            root=cp.root_bytes,
        )
    except LedgerCorrupt as exc:
        raise LedgerCorrupt(
            f"ledger entry {index} is not in the signed checkpoint: {exc.message}"
        ) from None
    return index, raw


KEY_TYPES = ("trust_policy", "key_added", "key_revoked")


def check_signed_checkpoint(
    cp: Checkpoint,
    cosignatures: list[Cosignature],
    key_items: Iterable[dict[str, Any]],
    *,
    trusted_log_keys: set[str] | None,
    where: str,
    policy: TrustPolicy | None = None,
) -> Authority:
    """Offline trust in a checkpoint (exports and receipts): replay the proven
    entries (``key_items``: every policy and key entry, with any others, each
    index once) in index order, check the checkpoint's signature and every
    cosignature. Returns the authority for checking further entries.

    With ``policy`` (the auditor's board-signed trust policy): the checkpoint
    must be signed by one of its operator (log) keys and cosigned by at least
    its witness threshold of its witness keys, and the log must record it.

    Raises:
        LedgerCorrupt: a proof or signature does not verify.
        TrustError: the checkpoint's signer is not a trusted log key, or too few witnesses.
    """
    auth = Authority()
    proven = dict(check_proven_item(i, cp) for i in key_items)
    for index in sorted(proven):
        check_entry(index, proven[index], auth)
    if policy is not None:
        _check_with_policy(cp, cosignatures, auth, policy, where=where)
        return auth
    if trusted_log_keys is not None and cp.signer not in trusted_log_keys:
        # An explicit (even empty) pin fails closed: no trusted key, no trust.
        raise TrustError(
            f"the {where}'s checkpoint is signed by {cp.signer[:16]}, not a trusted log key"
        )
    check_checkpoint_signature(cp, auth)
    for cs in cosignatures:
        if (cs.size, cs.root) != (cp.size, cp.root):
            raise LedgerCorrupt(
                f"a cosignature in the {where} is for size {cs.size}, not the checkpoint's {cp.size}"
            )
        check_cosignature(cs, auth)
    return auth


def _check_with_policy(
    cp: Checkpoint, cosignatures: list[Cosignature], auth: Authority, policy: TrustPolicy, *, where: str
) -> None:
    if policy.digest not in {sha256_hex(canonical_json(e["signed"])) for e in auth.chain}:
        raise LedgerCorrupt(
            f"the {where}'s log does not record your {policy.label}; it is not the log the board governs "
            "(or the policy was dropped from it)"
        )
    if cp.signer not in policy.role_keys("operator"):
        raise LedgerCorrupt(
            f"the {where}'s checkpoint is signed by {cp.signer[:16]}, not a log (operator) key of your {policy.label}"
        )
    try:
        verify_note_signature(policy.keys[cp.signer], cp.body(), cp.signature, what="checkpoint")
    except TrustError:
        raise LedgerCorrupt(f"the {where}'s checkpoint signature by {cp.signer[:16]} does not verify") from None
    witnesses = policy.role_keys("witness")
    good: set[str] = set()
    for cs in cosignatures:
        if (cs.origin, cs.size, cs.root) != (cp.origin, cp.size, cp.root) or cs.witness not in witnesses:
            continue
        try:
            verify_note_signature(policy.keys[cs.witness], cs.message(), cs.signature, what="cosignature")
        except TrustError:
            raise LedgerCorrupt(f"a cosignature in the {where} by witness {cs.witness[:16]} does not verify") from None
        good.add(cs.witness)
    if len(good) < policy.witness_threshold:
        raise LedgerCorrupt(
            f"the {where}'s checkpoint of size {cp.size} has {len(good)} valid witness cosignature(s), "
            f"your {policy.label} needs {policy.witness_threshold}; ask the witnesses to cosign (opal witness cosign)"
        )


def load_policy_file(path: Path) -> TrustPolicy:
    """The auditor's board-signed trust policy (``trust_policy.json``), checked against its own board."""
    if not path.exists():
        raise BadInputError(f"no trust policy file at {path}")
    policy = TrustPolicy.load(path)
    return policy


def export_range(
    ledger: Ledger, start: int, stop: int, *, signer: Signer | None = None
) -> Iterator[dict[str, Any]]:
    """Yield the export lines for entries ``start`` … ``stop - 1``. When no
    signed checkpoint covers them yet and ``signer`` (the node's log key) is
    given, it signs one of the committed ledger first.

    Raises:
        BadInputError: no signed checkpoint covers ``stop`` entries, and no signer.
        LedgerCorrupt: the checkpoint does not match the stored entries.
    """
    cp = ledger.latest_checkpoint(covering=stop - 1) if stop > 0 else ledger.latest_checkpoint()
    if cp is None and signer is not None:
        ledger.checkpoint(signer)
        cp = ledger.latest_checkpoint(covering=stop - 1) if stop > 0 else ledger.latest_checkpoint()
    if cp is None:
        raise BadInputError(
            f"no signed checkpoint covers entries up to {stop}; sign one with opal ledger checkpoint"
        )
    tree = ledger.tree()
    if cp.size > tree.size or tree.root(cp.size).hex() != cp.root:
        raise LedgerCorrupt(
            f"the signed checkpoint of size {cp.size} does not match the ledger; run opal ledger verify"
        )
    yield {
        "kind": "checkpoint",
        "format": FORMAT,
        "origin": cp.origin,
        "range": [start, stop],
        "checkpoint": cp.to_dict(),
        "cosignatures": [c.to_dict() for c in ledger.cosignatures(size=cp.size)],
        "leaves": base64.b64encode(b"".join(tree.leaf(i) for i in range(cp.size))).decode("ascii"),
    }
    key_entries = [e for t in KEY_TYPES for e in ledger.entries(type=t, stop=cp.size)]
    for e in sorted(key_entries, key=lambda e: e.index):
        yield proven_item("key", e.index, e.raw, tree, cp.size)
    page = 10_000
    for lo in range(start, stop, page):
        for e in ledger.entries(start=lo, stop=min(stop, lo + page)):
            yield proven_item("entry", e.index, e.raw, tree, cp.size)


def verify_export(
    lines: Iterable[str],
    *,
    trusted_log_keys: set[str] | None = None,
    against: Checkpoint | None = None,
    policy: TrustPolicy | None = None,
    state: Path | None = None,
) -> dict[str, Any]:
    """Verify an export with no database: proofs, signatures, roles, completeness of the range.

    ``policy``: the auditor's board-signed trust policy (log keys, witnesses and
    their threshold come from it). ``state``: the auditor's state file; the
    export must extend the tree recorded there (proved from the export's
    leaves), and the new checkpoint is recorded.

    ``trusted_log_keys``: key ids allowed to sign the checkpoint (None: the
    operator keys the export itself proves to be in the log; an empty set
    trusts nothing and fails). ``against``: a checkpoint the auditor holds, of
    the same size (or equal root) as the export's.

    Raises:
        LedgerCorrupt: anything does not verify, naming the first bad entry.
        TrustError: the checkpoint is signed by a key outside ``trusted_log_keys``.
        BadInputError: the file is not an export.
    """
    header: dict[str, Any] | None = None
    key_items: list[dict[str, Any]] = []
    entry_items: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise BadInputError(f"line {n} of the export is not JSON") from None
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind == "checkpoint":
            if header is not None:
                raise LedgerCorrupt("the export holds two checkpoint headers")
            header = item
        elif kind == "key":
            key_items.append(item)
        elif kind == "entry":
            entry_items.append(item)
        else:
            raise BadInputError(f"line {n} of the export has unknown kind {kind!r}")
    if header is None or header.get("format") != FORMAT:
        raise BadInputError(
            f"not an OPAL ledger export (expected a {FORMAT} checkpoint header on the first line)"
        )
    cp = Checkpoint.from_dict(header["checkpoint"])
    cosignatures = [Cosignature.from_dict(c) for c in header.get("cosignatures", [])]
    try:
        start, stop = (int(x) for x in header["range"])
    except (KeyError, TypeError, ValueError):
        raise BadInputError("export header must have range [A, B]") from None
    if not 0 <= start <= stop <= cp.size:
        raise LedgerCorrupt(
            f"export range {start}:{stop} is outside its checkpoint of size {cp.size}"
        )
    tree = _leaves_tree(header, cp)
    held = AuditState.load(state) if state is not None else None
    if held is not None:
        if held.origin != cp.origin:
            raise LedgerCorrupt(f"your audit state {state} is for log {held.origin!r}, the export is of {cp.origin!r}")
        if tree is None:
            raise BadInputError("this export carries no leaf hashes; export it again with this version of opal")
        if held.size > cp.size:
            raise LedgerCorrupt(
                f"the export's checkpoint covers {cp.size} entries, fewer than {held.label} in your audit state; "
                "the log was truncated or rolled back"
            )
        if tree.root(held.size).hex() != held.root:
            raise LedgerCorrupt(
                f"the export's log does not extend {held.label} in your audit state; history was rewritten (a fork)"
            )
    expected = start
    for item in entry_items:
        index = int(item.get("index", -1)) if isinstance(item.get("index"), int) else -1
        if index != expected:
            raise LedgerCorrupt(
                f"ledger entry {expected} is missing from the export (found {index} in its place); "
                "entries were deleted or reordered"
            )
        expected += 1
    if expected != stop:
        raise LedgerCorrupt(
            f"ledger entry {expected} is missing from the export (range {start}:{stop}); it was truncated"
        )
    in_range = {int(i["index"]) for i in entry_items}
    keys = check_signed_checkpoint(
        cp,
        cosignatures,
        [*entry_items, *(i for i in key_items if i.get("index") not in in_range)],
        trusted_log_keys=trusted_log_keys,
        where="export",
        policy=policy,
    )
    if against is not None:
        check_equivocation(
            [(against.size, against.root, against.signer), (cp.size, cp.root, cp.signer)]
        )
        if against.size > cp.size:
            raise LedgerCorrupt(
                f"the held checkpoint covers {against.size} entries, the export's only {cp.size}; "
                "the log was rolled back"
            )
        if against.size != cp.size:
            raise BadInputError(
                f"the held checkpoint has size {against.size}, the export's {cp.size}; check consistency online "
                f"with opal ledger prove consistency {against.size} {cp.size}"
            )
    if state is not None:
        AuditState.record(
            origin=cp.origin,
            size=cp.size,
            root=cp.root,
            resume={"authority": keys.to_state(), "runs_open": held.runs_open if held else {}},
            checkpoint=cp.to_dict(),
        ).save(state)
    return {
        "ok": True,
        "origin": cp.origin,
        "range": [start, stop],
        "entries_checked": stop - start,
        "checkpoint": {"size": cp.size, "root": cp.root, "signer": cp.signer},
        "cosignatures_checked": len(cosignatures),
        "keys_checked": len(key_items),
        "log_key_pinned": trusted_log_keys is not None or policy is not None,
        "policy": policy.label if policy is not None else None,
        "state": {"path": str(state), "from_size": held.size if held else 0} if state is not None else None,
    }


def export_checkpoint(lines: Iterable[str]) -> tuple[Checkpoint, merkle.MerkleTree]:
    """The checkpoint of an export and the tree of its leaf hashes (checked against it).

    Raises:
        BadInputError: no header or no leaf hashes.
        LedgerCorrupt: the leaf hashes do not lead to the checkpoint's root.
    """
    for line in lines:
        if not line.strip():
            continue
        try:
            header = json.loads(line)
        except ValueError:
            break
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            break
        cp = Checkpoint.from_dict(header["checkpoint"])
        tree = _leaves_tree(header, cp)
        if tree is None:
            raise BadInputError("this export carries no leaf hashes; export it again with this version of opal")
        return cp, tree
    raise BadInputError(f"not an OPAL ledger export (expected a {FORMAT} checkpoint header on the first line)")


def _leaves_tree(header: dict[str, Any], cp: Checkpoint) -> merkle.MerkleTree | None:
    """The tree of the export's leaf hashes, checked against its checkpoint; None if it has none."""
    text = header.get("leaves")
    if text is None:
        return None
    try:
        data = base64.b64decode(str(text), validate=True)
    except (ValueError, binascii.Error):
        raise LedgerCorrupt("the export's leaf hashes are not base64") from None
    if len(data) != cp.size * merkle.HASH_SIZE:
        raise LedgerCorrupt(f"the export carries {len(data) // merkle.HASH_SIZE} leaf hashes, its checkpoint {cp.size}")
    tree = merkle.MerkleTree(data[i : i + merkle.HASH_SIZE] for i in range(0, len(data), merkle.HASH_SIZE))
    if tree.root().hex() != cp.root:
        raise LedgerCorrupt("the export's leaf hashes do not lead to its checkpoint's root")
    return tree
