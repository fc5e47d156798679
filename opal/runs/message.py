"""The run message on the broker, and the check of the request it names.

A message is ``{"v": 1, "run_id": …, "request_signature": …}``: the run id
fixed in the ledger and the requester's signature over the request. The
worker acts on nothing else: it re-reads the request from the ledger, checks
that the message's signature is the one recorded there, and verifies that
signature with the requester's key. A message that fails any of these is
dropped; a stored request that fails them is refused.
"""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING, Any

from opal.canonical import canonical_json
from opal.errors import BadInputError, TrustError
from opal.trust.keys import verify_signature

if TYPE_CHECKING:
    from opal.ledger.records import LedgerEntry
    from opal.node import Node
    from opal.runs.records import RunRecord

__all__ = ["MESSAGE_VERSION", "check_message", "request_entry", "run_message", "verify_request"]

MESSAGE_VERSION = 1
_KEYS = {"v", "run_id", "request_signature"}
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_SIGNATURE = re.compile(r"^[0-9A-Za-z+/=_:.-]{16,512}$")


def request_entry(node: Node, run_id: str) -> tuple[Any, LedgerEntry]:
    """The ``runs`` row and its ``run_requested`` ledger entry.

    Raises:
        BadInputError: no run ``run_id`` on this node.
        TrustError: the row does not point at a matching ``run_requested`` entry.
    """
    row = node.db.one("SELECT * FROM runs WHERE run_id = ?", (run_id,))
    if row is None:
        raise BadInputError(f"no run {run_id} on this node")
    index = row["request_index"]
    entry = node.ledger.entry(int(index)) if index is not None else None
    if entry is None or entry.type != "run_requested" or entry.body.get("run_id") != run_id:
        raise TrustError(f"run {run_id} has no matching run_requested entry in the ledger")
    return row, entry


def run_message(node: Node, run_id: str) -> dict[str, Any]:
    _, entry = request_entry(node, run_id)
    return {"v": MESSAGE_VERSION, "run_id": run_id, "request_signature": entry.body["request_signature"]}


def check_message(node: Node, payload: Any) -> str:
    """The run id of a well-formed message for a signed request; raises otherwise.

    Raises:
        BadInputError: the payload is not a run message, or names no known run.
        TrustError: its signature is not the requester's signature in the ledger.
    """
    if not isinstance(payload, dict) or set(payload) != _KEYS:
        raise BadInputError(f"not a run message: expected an object with keys {sorted(_KEYS)}")
    if payload["v"] != MESSAGE_VERSION:
        raise BadInputError(f"run message version {payload['v']!r} is not {MESSAGE_VERSION}")
    run_id, signature = payload["run_id"], payload["request_signature"]
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise BadInputError("not a run message: run_id must be 32 hex digits")
    if not isinstance(signature, str) or not _SIGNATURE.match(signature):
        raise TrustError(f"run message for {run_id} carries no well-formed request signature")
    _, entry = request_entry(node, run_id)
    if not hmac.compare_digest(signature, str(entry.body.get("request_signature", ""))):
        raise TrustError(f"run message for {run_id} carries a signature that is not the requester's")
    return run_id


def verify_request(node: Node, record: RunRecord) -> None:
    """The stored request is the one its requester signed, with an unrevoked key.

    Raises:
        TrustError: no matching ledger entry, unknown or revoked requester,
            a bad signature, or a ``runs`` row that differs from the signed request.
    """
    _, entry = request_entry(node, record.run_id)
    body = dict(entry.body)
    signature = str(body.pop("request_signature", ""))
    from opal.trust.review import key_for_role

    requester = str(body.get("requester"))
    if requester != entry.actor:
        raise TrustError(f"run {record.run_id}: the request names another requester than the key that signed it")
    # roles come from the board: the requester must be a statistician of the policy in force
    public = key_for_role(node, requester, "statistician", what=f"run {record.run_id}")
    verify_signature(public, _domain(), canonical_json(body), signature)
    signed = (body.get("digest"), body.get("dataset"), body.get("epsilon"), body.get("params"))
    if signed != (record.digest, record.dataset, record.epsilon, record.params):
        raise TrustError(f"run {record.run_id}: the stored request differs from the signed one")


def _domain() -> str:
    from opal.runs.request import REQUEST_DOMAIN

    return REQUEST_DOMAIN
