"""Result documents: a released table together with the proof that it came
from an approved run — its ledger index, an RFC 9162 inclusion proof and the
signed checkpoint (``opal.ledger.receipts``). Anyone holding the document can
check it offline with ``verify_result_document``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opal.canonical import canonical_json, sha256_hex
from opal.errors import BadInputError, TrustError
from opal.ledger.receipts import make_receipt, verify_receipt
from opal.runs.records import get_run

if TYPE_CHECKING:
    from opal.node import Node

__all__ = ["RESULT_FORMAT", "result_document", "verify_result_document", "finished_index"]

RESULT_FORMAT = "opal-result/1"


def finished_index(node: Node, run_id: str) -> int:
    """Ledger index of the ``run_finished`` entry that released ``run_id``'s table
    (for a cached run, the entry of the run it was served from)."""
    record = get_run(node, run_id)
    source = record.cached_from or run_id
    source_record = get_run(node, source)
    subject = source_record.algorithm.split("@")[0]
    for entry in node.ledger.entries(type="run_finished", subject=subject):
        if entry.body.get("run_id") == source and entry.body.get("outcome") == "released":
            return entry.index
    raise BadInputError(f"run {run_id} has no released outcome in the ledger")


def result_document(
    node: Node, run_id: str, *, wait_seconds: float = 3.0, require_receipt: bool = True
) -> dict[str, Any]:
    record = get_run(node, run_id)
    if record.state != "released" or record.result is None:
        raise BadInputError(f"run {run_id} has no released result (state {record.state})")
    index = finished_index(node, run_id)
    receipt: dict[str, Any] | None = None
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            receipt = make_receipt(node.ledger, index)
            break
        except BadInputError:
            # the worker signs checkpoints a moment after a release (they are batched)
            if time.monotonic() >= deadline:
                if require_receipt:
                    raise BadInputError(
                        f"no signed checkpoint covers ledger entry {index} yet; the operator signs one with "
                        "opal ledger checkpoint (workers do so after releases); try again in a moment"
                    ) from None
                break
            time.sleep(0.1)
    return {
        "format": RESULT_FORMAT,
        "run_id": record.run_id,
        "algorithm": record.algorithm,
        "digest": record.digest,
        "dataset": record.dataset,
        "params": record.params,
        "epsilon": record.epsilon,
        "cached_from": record.cached_from,
        "release": record.result,
        "result_digest": record.result_digest,
        "ledger_index": index,
        "receipt": receipt,
    }


def verify_result_document(doc: Any, *, trusted_log_keys: set[str] | None = None) -> dict[str, Any]:
    """Check a result document offline: the table hashes to the digest the ledger
    recorded for a released run of an approved bundle, proven in a signed checkpoint.

    Returns a summary; raises TrustError, LedgerCorrupt or BadInputError.
    """
    if not isinstance(doc, dict) or doc.get("format") != RESULT_FORMAT:
        raise BadInputError(
            f"not an OPAL result document (expected format {RESULT_FORMAT}; see opal runs result --out)"
        )
    if not isinstance(doc.get("release"), dict) or not isinstance(doc.get("receipt"), dict):
        raise BadInputError("the result document has no release or no receipt")
    digest = sha256_hex(canonical_json(doc["release"]))
    if digest != doc.get("result_digest"):
        raise TrustError(
            f"the released table hashes to {digest[:16]}…, the document claims {str(doc.get('result_digest'))[:16]}…; "
            "the table was changed"
        )
    verify_receipt(doc["receipt"], result_digest=digest, trusted_log_keys=trusted_log_keys)
    entry = doc["receipt"]["entry"]
    return {
        "ok": True,
        "run_id": doc.get("run_id"),
        "algorithm": doc.get("algorithm"),
        "result_digest": digest,
        "ledger_index": doc.get("ledger_index"),
        "checkpoint_size": doc["receipt"]["checkpoint"]["size"],
        "checkpoint_signer": doc["receipt"]["checkpoint"]["signer"],
        "entry": entry.get("index") if isinstance(entry, dict) else None,
    }
