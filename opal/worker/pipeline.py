"""One run, start to finish, on the worker next to the data (DESIGN.md "The pipeline").

    1. load bundle by digest; recompute digest from the exact bytes to run
    2. verify author signature + k-of-n reviewer approvals
    3. validate params against the bundle's JSON Schema
    4. reserve privacy budget (atomic), append run_started (durable)
    5. sandbox child process returns a contributions table
    6. release gate: bound, aggregate, noise, suppress
    7. append run_finished; only then hand the released table back

Every outcome is recorded in the ledger with its reason. Messages never hold
data values: errors raised by the algorithm are scrubbed by the sandbox.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

from opal.canonical import canonical_json, sha256_hex
from opal.data import catalog
from opal.errors import (
    BadInputError,
    InternalError,
    OpalError,
    ReleaseRefused,
    TrustError,
)
from opal.release import budget
from opal.runs.records import RunRecord, get_run
from opal.runs.request import REQUEST_DOMAIN
from opal.trust.keys import utcnow, verify_signature
from opal.trust.review import verify_for_run

if TYPE_CHECKING:
    from opal.node import Node
    from opal.sandbox import Runtime
    from opal.trust.keyring import Signer

__all__ = ["execute_run", "Outcome"]

log = logging.getLogger("opal.worker")

Outcome = dict[str, Any]
RuntimeFor = Callable[[catalog.Dataset], "Runtime"]

# Faults found before anything ran are refusals; faults of the code or its
# limits are failures. Both are final and recorded.
_REFUSALS = (TrustError, BadInputError, ReleaseRefused)


def _outcome(record: RunRecord) -> Outcome:
    return {
        "run_id": record.run_id,
        "state": record.state,
        "release": record.result,
        "result_digest": record.result_digest,
        "error": record.error,
        "epsilon": record.epsilon,
    }


def execute_run(node: Node, run_id: str, *, signer: Signer, runtime_for: RuntimeFor) -> Outcome:
    """Run ``run_id`` exactly once. A redelivered message for a finished run
    returns the recorded outcome and changes nothing."""
    record = get_run(node, run_id)
    if record.finished:
        return _outcome(record)
    try:
        return _execute(node, record, signer=signer, runtime_for=runtime_for)
    except OpalError as exc:
        return _finish_failed(node, record, exc, signer=signer)
    except Exception as exc:  # a fault of ours: record it without details that might hold data
        log.error("run %s: internal error %s", run_id, type(exc).__name__)
        return _finish_failed(
            node, record, InternalError(f"internal error in the worker ({type(exc).__name__}); see the worker log"), signer=signer
        )


def _check_request(node: Node, record: RunRecord) -> None:
    """The request in the ledger is the one the requester signed."""
    row = node.db.one("SELECT request_index FROM runs WHERE run_id = ?", (record.run_id,))
    entries = node.ledger.entries(type="run_requested", subject=record.algorithm.split("@")[0])
    entry = next((e for e in entries if e.body.get("run_id") == record.run_id), None)
    if entry is None or row is None or entry.index != row["request_index"]:
        raise TrustError(f"run {record.run_id} has no matching run_requested entry in the ledger")
    body = dict(entry.body)
    signature = body.pop("request_signature", "")
    requester = node.keyring.by_id(str(body.get("requester")))
    if not requester:
        raise TrustError(f"run {record.run_id} was requested by an unknown key")
    verify_signature(requester[0].public_key, REQUEST_DOMAIN, canonical_json(body), signature)
    if requester[0].revoked:
        raise TrustError(f"requester key {requester[0].name!r} was revoked on {requester[0].revoked_at}")
    if (body["digest"], body["dataset"], body["epsilon"]) != (record.digest, record.dataset, record.epsilon) or body["params"] != record.params:
        raise TrustError(f"run {record.run_id}: the stored request differs from the signed one")


def _execute(node: Node, record: RunRecord, *, signer: Signer, runtime_for: RuntimeFor) -> Outcome:
    _check_request(node, record)
    ds = catalog.get(node, record.dataset)
    # 1–2. exact bytes, signature, approvals, revocation, rollback
    bundle = verify_for_run(node, record.digest)
    manifest = bundle.manifest
    if manifest.dataset != ds.schema:
        raise BadInputError(
            f"{bundle.ref} needs a dataset of schema {manifest.dataset!r}; {ds.name!r} has schema {ds.schema!r}"
        )
    if manifest.privacy.unit != ds.unit:
        raise BadInputError(
            f"{bundle.ref} declares privacy unit {manifest.privacy.unit!r}; dataset {ds.name!r} protects {ds.unit!r}"
        )
    # 3. params
    manifest.validate_params(record.params)
    if record.epsilon > ds.policy.max_epsilon_per_run + 1e-12:
        raise ReleaseRefused(
            f"ε={record.epsilon:g} is above the per-run cap {ds.policy.max_epsilon_per_run:g} of dataset {ds.name!r}; "
            "ask for less with --epsilon"
        )
    # averaging attack: an identical run is served the cached release, no new noise, no new spend
    cached = node.db.one(
        "SELECT run_id, result, result_digest FROM runs WHERE cache_key = ? AND state = 'released' AND run_id != ? "
        "ORDER BY updated LIMIT 1",
        (record.cache_key, record.run_id),
    )
    if cached is not None:
        return _finish_cached(node, record, cached, signer=signer)
    # 4. reserve budget and record the start, in one durable transaction
    if record.state == "requested":
        with node.db.transaction() as tx:
            budget.reserve(tx, dataset=ds.name, run_id=record.run_id, epsilon=record.epsilon, actor=signer.key_id)
            tx.execute("UPDATE runs SET state = 'started', updated = ? WHERE run_id = ?", (utcnow(), record.run_id))
            node.ledger.append_in(
                tx,
                type="run_started",
                body={
                    "run_id": record.run_id,
                    "digest": record.digest,
                    "dataset": ds.name,
                    "dataset_version": ds.version,
                    "epsilon_reserved": record.epsilon,
                },
                signer=signer,
                subject=manifest.name,
            )
    # 5. sandbox
    runtime = runtime_for(ds)
    contributions = runtime.run(source=bundle.source, entrypoint=manifest.entrypoint, params=record.params)
    # 6. release gate
    from opal.release import release as gate

    released = gate(
        contributions,
        privacy=manifest.privacy,
        policy=ds.policy,
        epsilon=record.epsilon,
        known_units=_known_units(runtime, ds),
    )
    result = released.to_dict()
    # 7. record, then return
    return _finish_released(node, record, result, signer=signer)


def _known_units(runtime: Runtime, ds: catalog.Dataset) -> pd.Series | None:
    getter = getattr(runtime, "units", None)
    if callable(getter):
        units: pd.Series = getter(ds.unit)
        return units
    import pyarrow.parquet as pq

    return pq.read_table(ds.path, columns=[ds.unit]).column(0).to_pandas()


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for d in result.get("decisions", []):
        if not d.get("released"):
            reasons[str(d.get("reason"))] = reasons.get(str(d.get("reason")), 0) + 1
    return {
        "cells_released": result.get("cells_released"),
        "cells_suppressed": result.get("cells_suppressed"),
        "suppressed_by_reason": reasons,
    }


def _finish_released(node: Node, record: RunRecord, result: dict[str, Any], *, signer: Signer) -> Outcome:
    result_digest = sha256_hex(canonical_json(result))
    with node.db.transaction() as tx:
        spent = budget.commit(tx, run_id=record.run_id, actor=signer.key_id)
        node.ledger.append_in(
            tx,
            type="run_finished",
            body={
                "run_id": record.run_id,
                "outcome": "released",
                "result_digest": result_digest,
                "epsilon_spent": spent,
                **_summary(result),
            },
            signer=signer,
            subject=record.algorithm.split("@")[0],
        )
        tx.execute(
            "UPDATE runs SET state = 'released', result = ?, result_digest = ?, updated = ? WHERE run_id = ?",
            (json.dumps(result), result_digest, utcnow(), record.run_id),
        )
    node.ledger.checkpoint(signer)
    return _outcome(get_run(node, record.run_id))


def _finish_cached(node: Node, record: RunRecord, cached: Any, *, signer: Signer) -> Outcome:
    result = json.loads(cached["result"])
    result["cached_from"] = cached["run_id"]
    with node.db.transaction() as tx:
        node.ledger.append_in(
            tx,
            type="run_finished",
            body={
                "run_id": record.run_id,
                "outcome": "released",
                "cached_from": cached["run_id"],
                "result_digest": cached["result_digest"],
                "epsilon_spent": 0.0,
            },
            signer=signer,
            subject=record.algorithm.split("@")[0],
        )
        tx.execute(
            "UPDATE runs SET state = 'released', result = ?, result_digest = ?, updated = ? WHERE run_id = ?",
            (json.dumps(result), cached["result_digest"], utcnow(), record.run_id),
        )
    return _outcome(get_run(node, record.run_id))


def _finish_failed(node: Node, record: RunRecord, exc: OpalError, *, signer: Signer) -> Outcome:
    state = "refused" if isinstance(exc, _REFUSALS) else "failed"
    error = exc.to_dict()
    with node.db.transaction() as tx:
        current = tx.execute("SELECT state FROM runs WHERE run_id = ?", (record.run_id,)).fetchone()
        if current and current[0] in ("released", "refused", "failed", "cancelled"):
            pass  # another delivery finished it first: record nothing twice
        else:
            returned = budget.give_back(tx, run_id=record.run_id, actor=signer.key_id)
            node.ledger.append_in(
                tx,
                type="run_finished",
                body={
                    "run_id": record.run_id,
                    "outcome": state,
                    "reason": exc.message,
                    "error_type": type(exc).__name__,
                    "exit_code": exc.exit_code,
                    "epsilon_spent": 0.0,
                    "epsilon_returned": returned,
                },
                signer=signer,
                subject=record.algorithm.split("@")[0],
            )
            tx.execute(
                "UPDATE runs SET state = ?, error = ?, updated = ? WHERE run_id = ?",
                (state, json.dumps(error), utcnow(), record.run_id),
            )
    log.info("run %s %s: %s", record.run_id, state, type(exc).__name__)
    return _outcome(get_run(node, record.run_id))
