"""Receipts: proof, for whoever receives a statistic, that it came from an approved run.

A receipt carries the run's ledger entry, the entries it rests on (the run
request, the run start naming the bundle digest, the approvals of that
digest), the ``key_added``/``key_revoked`` entries of every key that signed
any of them, an RFC 9162 inclusion proof for each in the latest signed
checkpoint, and that checkpoint with its cosignatures. ``verify_receipt``
needs nothing else: no database, no network.
"""

from __future__ import annotations

from typing import Any

from opal.errors import BadInputError, LedgerCorrupt, TrustError
from opal.ledger.export import KEY_TYPES, check_proven_item, check_signed_checkpoint, proven_item
from opal.ledger.log import Ledger
from opal.ledger.records import Checkpoint, Cosignature, LedgerEntry
from opal.ledger.verify import check_equivocation

__all__ = ["RECEIPT_FORMAT", "make_receipt", "verify_receipt"]

RECEIPT_FORMAT = "opal-receipt/1"
_RUN_TYPES = ("run_requested", "run_started", "run_finished")


def make_receipt(ledger: Ledger, index: int) -> dict[str, Any]:
    """The receipt for ledger entry ``index`` (usually a ``run_finished``).

    Raises:
        BadInputError: no such entry, or no signed checkpoint covers it yet.
        LedgerCorrupt: the checkpoint does not match the stored entries.
    """
    entry = ledger.entry(index)
    cp = ledger.latest_checkpoint(covering=index)
    if cp is None:
        raise BadInputError(
            f"no signed checkpoint covers ledger entry {index} yet; sign one with opal ledger checkpoint"
        )
    tree = ledger.tree()
    if cp.size > tree.size or tree.root(cp.size).hex() != cp.root:
        raise LedgerCorrupt(
            f"the signed checkpoint of size {cp.size} does not match the ledger; run opal ledger verify"
        )
    related: list[LedgerEntry] = []
    run_id = entry.body.get("run_id")
    if entry.type in _RUN_TYPES and run_id is not None:
        subject = entry.subject
        for t in _RUN_TYPES:
            for e in ledger.entries(type=t, subject=subject, stop=cp.size):
                if e.body.get("run_id") == run_id and e.index != index:
                    related.append(e)
        digests = {e.body.get("digest") for e in [entry, *related] if e.body.get("digest")}
        for e in ledger.entries(type="bundle_approved", stop=cp.size):
            if e.body.get("digest") in digests:
                related.append(e)
    cosignatures = ledger.cosignatures(size=cp.size)
    # Roles come from the board: every policy and key entry the checkpoint covers.
    key_entries = [e for t in KEY_TYPES for e in ledger.entries(type=t, stop=cp.size)]
    related = [e for e in related if e.type not in KEY_TYPES]
    return {
        "format": RECEIPT_FORMAT,
        "entry": proven_item("entry", entry.index, entry.raw, tree, cp.size),
        "related": [
            proven_item("entry", e.index, e.raw, tree, cp.size)
            for e in sorted(related, key=lambda e: e.index)
        ],
        "keys": [
            proven_item("key", e.index, e.raw, tree, cp.size)
            for e in sorted(key_entries, key=lambda e: e.index)
        ],
        "checkpoint": cp.to_dict(),
        "cosignatures": [c.to_dict() for c in cosignatures],
    }


def verify_receipt(
    receipt: dict[str, Any],
    *,
    result_digest: str | None = None,
    trusted_log_keys: set[str] | None = None,
) -> None:
    """Check a receipt offline; return None or raise.

    Every entry must be proven in the checkpoint and signed by a key its
    ``key_added`` entry (also proven) declares, unrevoked at that index. The
    checkpoint must be signed by an operator key — one of
    ``trusted_log_keys`` when given (an empty set trusts nothing and fails);
    when None, the operator key the receipt itself proves to be in the log,
    which shows consistency but not who runs the log: pin it for that.

    With ``result_digest``: the entry must be a released ``run_finished`` with
    that result digest, its run must have been started on a bundle digest,
    and that digest must have at least one approval recorded before the start.

    Raises:
        LedgerCorrupt: a proof, signature or the checkpoint does not verify.
        TrustError: untrusted log key, or the result is not from an approved, released run.
        BadInputError: not a receipt.
    """
    if not isinstance(receipt, dict) or receipt.get("format") != RECEIPT_FORMAT:
        raise BadInputError(f"not an OPAL receipt (expected format {RECEIPT_FORMAT})")
    try:
        cp = Checkpoint.from_dict(receipt["checkpoint"])
        cosignatures = [Cosignature.from_dict(c) for c in receipt.get("cosignatures", [])]
        items = [receipt["entry"], *receipt.get("related", [])]
        key_items = list(receipt.get("keys", []))
    except (KeyError, TypeError, AttributeError):
        raise BadInputError("a receipt needs entry, related, keys and checkpoint") from None
    proven = [check_proven_item(i, cp) for i in items]
    indexes = {index for index, _ in proven}
    auth = check_signed_checkpoint(
        cp,
        cosignatures,
        [*items, *(i for i in key_items if i.get("index") not in indexes)],
        trusted_log_keys=trusted_log_keys,
        where="receipt",
    )
    check_equivocation(
        [(cp.size, cp.root, cp.signer)] + [(c.size, c.root, c.witness) for c in cosignatures]
    )
    entries = [LedgerEntry.parse(raw) for _, raw in proven]
    if result_digest is None:
        return
    main, related = entries[0], entries[1:]
    if main.type != "run_finished" or main.body.get("outcome") != "released":
        raise TrustError(
            f"ledger entry {main.index} is a {main.type} ({main.body.get('outcome')}), not a released run"
        )
    if main.body.get("result_digest") != result_digest:
        raise TrustError(
            f"ledger entry {main.index} records result digest {str(main.body.get('result_digest'))[:16]}…, "
            f"the result has {result_digest[:16]}…; this is not the released result"
        )
    run_id = main.body.get("run_id")
    started = [
        e
        for e in related
        if e.type == "run_started" and e.body.get("run_id") == run_id and e.index < main.index
    ]
    if not started or not started[0].body.get("digest"):
        raise TrustError(f"the receipt does not show run {run_id} being started on a bundle digest")
    digest = started[0].body["digest"]
    approvals = [
        e
        for e in related
        if e.type == "bundle_approved"
        and e.body.get("digest") == digest
        and e.index < started[0].index
    ]
    needed = auth.policy.threshold if auth.policy is not None else 1
    distinct = {e.actor for e in approvals}
    if len(distinct) < needed:
        raise TrustError(
            f"the receipt shows {len(distinct)} reviewer approval(s) of bundle {digest[:16]}… before run {run_id} "
            f"started; the trust policy needs {needed}"
        )
