"""Cancelling a run: the requester's signed outcome ``cancelled``.

A run that has no outcome yet can be cancelled by the key that requested it.
The cancellation is a ``run_finished`` entry (outcome ``cancelled``) signed
by the requester, in the same transaction that returns any reserved budget.
A worker that later finishes the run finds an outcome already recorded and
drops its result: nothing of a cancelled run is ever released.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from opal.errors import BadInputError, TrustError
from opal.release import budget
from opal.runs.message import request_entry
from opal.runs.records import TERMINAL_STATES, RunRecord, get_run
from opal.trust.keys import utcnow

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.keyring import Signer

__all__ = ["CANCELLED_MESSAGE", "cancel_run"]

CANCELLED_MESSAGE = "run {run_id} was cancelled by its requester; nothing was released"


def cancel_run(node: Node, run_id: str, *, signer: Signer) -> RunRecord:
    """Record the requester's cancellation of ``run_id`` and return its budget.

    Raises:
        BadInputError: no such run, or it has an outcome already.
        TrustError: ``signer`` is not the key that requested the run.
    """
    record = get_run(node, run_id)
    _, entry = request_entry(node, run_id)
    if signer.key_id != entry.body.get("requester"):
        raise TrustError(
            f"run {run_id} was requested by another key; only its requester may cancel it (--key NAME)"
        )
    error = {"type": "ReleaseRefused", "message": CANCELLED_MESSAGE.format(run_id=run_id), "exit_code": 3}
    with node.db.transaction() as tx:
        (state,) = tx.execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if state in TERMINAL_STATES:
            raise BadInputError(f"run {run_id} is {state} already; only a run without an outcome can be cancelled")
        returned = budget.give_back(tx, run_id=run_id, actor=signer.key_id)
        node.ledger.append_in(
            tx,
            type="run_finished",
            body={
                "run_id": run_id,
                "outcome": "cancelled",
                "reason": "cancelled by the requester",
                "state_before": state,
                "epsilon_spent": 0.0,
                "epsilon_returned": returned,
            },
            signer=signer,
            subject=record.algorithm.split("@")[0],
        )
        tx.execute(
            "UPDATE runs SET state = 'cancelled', error = ?, updated = ? WHERE run_id = ?",
            (json.dumps(error), utcnow(), run_id),
        )
    return get_run(node, run_id)
