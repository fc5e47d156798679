"""Offline audit: export a range of entries with proofs, verify it with no database.

JSON Lines, one object per line:

1. ``{"kind": "checkpoint", "format", "origin", "range": [A, B], "checkpoint",
   "cosignatures"}`` — the signed checkpoint every proof leads to;
2. ``{"kind": "key", "index", "entry", "proof"}`` — every ``key_added`` and
   ``key_revoked`` entry the checkpoint covers, so signatures can be checked;
3. ``{"kind": "entry", "index", "entry", "proof"}`` — entries A … B-1.

``entry`` is the stored bytes as a string (exact; its leaf hash is
recomputed), ``proof`` the RFC 9162 inclusion proof (hex) in the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from opal.errors import BadInputError, LedgerCorrupt, TrustError
from opal.ledger import merkle
from opal.ledger.log import Ledger
from opal.ledger.records import Checkpoint, Cosignature
from opal.ledger.verify import (
    KeyState,
    check_checkpoint_signature,
    check_cosignature,
    check_entry,
    check_equivocation,
)

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


def check_signed_checkpoint(
    cp: Checkpoint,
    cosignatures: list[Cosignature],
    key_items: Iterable[dict[str, Any]],
    *,
    trusted_log_keys: set[str] | None,
    where: str,
) -> KeyState:
    """Offline trust in a checkpoint (exports and receipts): replay the proven
    key entries, check the log-key pin, the checkpoint's signature and every
    cosignature. Returns the key state for checking further entries.

    Raises:
        LedgerCorrupt: a proof or signature does not verify.
        TrustError: the checkpoint's signer is not a pinned log key.
    """
    keys = KeyState()
    for index, raw in sorted((check_proven_item(i, cp) for i in key_items), key=lambda x: x[0]):
        check_entry(index, raw, keys)
    if trusted_log_keys is not None and cp.signer not in trusted_log_keys:
        # An explicit (even empty) pin fails closed: no trusted key, no trust.
        raise TrustError(
            f"the {where}'s checkpoint is signed by {cp.signer[:16]}, not a trusted log key"
        )
    check_checkpoint_signature(cp, keys)
    for cs in cosignatures:
        if (cs.size, cs.root) != (cp.size, cp.root):
            raise LedgerCorrupt(
                f"a cosignature in the {where} is for size {cs.size}, not the checkpoint's {cp.size}"
            )
        check_cosignature(cs, keys)
    return keys


def export_range(ledger: Ledger, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Yield the export lines for entries ``start`` … ``stop - 1``.

    Raises:
        BadInputError: no signed checkpoint covers ``stop`` entries yet.
        LedgerCorrupt: the checkpoint does not match the stored entries.
    """
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
    }
    for kind_type in ("key_added", "key_revoked"):
        for e in ledger.entries(type=kind_type, stop=cp.size):
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
) -> dict[str, Any]:
    """Verify an export with no database: proofs, signatures, completeness of the range.

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
    keys = check_signed_checkpoint(
        cp, cosignatures, key_items, trusted_log_keys=trusted_log_keys, where="export"
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
    expected = start
    for item in entry_items:
        index, raw = check_proven_item(item, cp)
        if index != expected:
            raise LedgerCorrupt(
                f"ledger entry {expected} is missing from the export (found {index} in its place); "
                "entries were deleted or reordered"
            )
        check_entry(index, raw, keys)
        expected += 1
    if expected != stop:
        raise LedgerCorrupt(
            f"ledger entry {expected} is missing from the export (range {start}:{stop}); it was truncated"
        )
    return {
        "ok": True,
        "origin": cp.origin,
        "range": [start, stop],
        "entries_checked": stop - start,
        "checkpoint": {"size": cp.size, "root": cp.root, "signer": cp.signer},
        "cosignatures_checked": len(cosignatures),
        "keys_checked": len(key_items),
        "log_key_pinned": trusted_log_keys is not None,
    }
