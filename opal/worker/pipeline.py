"""One run, start to finish, on the worker next to the data (DESIGN.md "The pipeline").

    1. load bundle by digest; recompute digest from the exact bytes to run
    2. verify author signature + k-of-n reviewer approvals
    3. validate params against the bundle's JSON Schema (and its data-free
       check_params, if any); compile policy; resolve the public group
       domains; check ε against the policy
    4. reserve privacy budget (atomic, exact), append run_started (durable)
    5. sandbox child process, on per-run pseudonyms, returns a contributions table
    6. release gate: drop out-of-domain labels, bound, noise every cell
    7. append run_finished; only then hand the released table back

Total runs: steps 1–4 decide without data and may refuse (nothing spent).
From step 5 on, whatever the algorithm does (raise, hit a limit, be denied
by a runtime guard, return garbage) the requester gets an ordinary noisy
release over the domain and spends ε as any run: the outcome of a run must
not depend on private data except through noise. The true outcome (the
error, what the gate dropped) is the operator's (``opal runs decisions``);
the ledger keeps only its digest.

Exactly once: every transaction that records an outcome first re-reads the
run's state under the write lock and records nothing if an outcome exists
(a redelivery, a cancellation, a takeover that finished first). Budget is
reserved once, when the run first starts, and committed or returned once, with
the outcome. A started run whose worker died is taken over by the next
delivery (a new ``run_started`` with ``attempt`` n), at most ``MAX_ATTEMPTS``
times: a run that keeps killing its workers is failed, not retried forever.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from opal.canonical import canonical_json, sha256_hex
from opal.data import catalog
from opal.errors import (
    BadInputError,
    InternalError,
    LimitExceeded,
    OpalError,
    PolicyViolation,
    ReleaseRefused,
    TrustError,
)
from opal.release import budget
from opal.runs.message import verify_request
from opal.runs.records import TERMINAL_STATES, RunRecord, get_run, record_decisions
from opal.trust.governance import require_board_policy
from opal.trust.keys import utcnow
from opal.trust.review import verify_for_run
from opal.worker.liveness import is_alive, local_worker

if TYPE_CHECKING:
    from opal.node import Node
    from opal.release.gate import Release
    from opal.release.policy import PrivacySpec
    from opal.sandbox import Runtime
    from opal.sandbox.pseudonyms import RunPseudonyms
    from opal.trust.keyring import Signer

__all__ = [
    "MAX_ATTEMPTS",
    "Dropped",
    "Outcome",
    "Prepared",
    "execute_run",
    "fail_run",
    "finish_released",
    "outcome_of",
    "prepare",
    "run_owner",
    "sandbox_contributions",
]

log = logging.getLogger("opal.worker")

Outcome = dict[str, Any]
RuntimeFor = Callable[[catalog.Dataset], "Runtime"]

# Deliveries that start a run (the first and each takeover after a lost worker).
MAX_ATTEMPTS = int(os.environ.get("OPAL_MAX_ATTEMPTS", "3"))

# Faults found before anything ran are refusals; faults of the code or its
# limits are failures. Both are final and recorded.
_REFUSALS = (TrustError, BadInputError, ReleaseRefused, PolicyViolation)


class Dropped(Exception):
    """This delivery must change nothing: the run has an outcome or a live owner."""


def outcome_of(record: RunRecord, *, dropped: bool = False) -> Outcome:
    out: Outcome = {
        "run_id": record.run_id,
        "state": record.state,
        "release": record.result,
        "result_digest": record.result_digest,
        "cached_from": record.cached_from,
        "error": record.error,
        "epsilon": record.epsilon,
    }
    if dropped:
        out["dropped"] = True
    return out


def run_owner(node: Node, run_id: str) -> tuple[int, str | None]:
    """(attempts so far, worker id of the last attempt) of ``run_id``."""
    from opal.runs._tables import ensure_run_tables

    ensure_run_tables(node.db)
    row = node.db.one("SELECT attempts, worker FROM run_attempts WHERE run_id = ?", (run_id,))
    return (int(row["attempts"]), str(row["worker"])) if row else (0, None)


def execute_run(
    node: Node, run_id: str, *, signer: Signer, runtime_for: RuntimeFor, worker: str | None = None
) -> Outcome:
    """Run ``run_id`` exactly once. A redelivered message for a finished run
    returns the recorded outcome and changes nothing; one for a run another
    live worker is running returns ``dropped``."""
    record = get_run(node, run_id)
    if record.finished:
        log.info("run %s is %s already: delivery dropped", run_id, record.state)
        return outcome_of(record, dropped=True)
    me = worker or local_worker(node, dataset=record.dataset)
    if record.state == "started":
        _, owner = run_owner(node, run_id)
        if owner not in (None, me) and is_alive(node.db, owner):
            log.info("run %s is in flight on %s: delivery dropped", run_id, owner)
            return outcome_of(record, dropped=True)
    try:
        return _execute(node, record, signer=signer, runtime_for=runtime_for, me=me)
    except Dropped as why:
        log.info("run %s: delivery dropped (%s)", run_id, why)
        return outcome_of(get_run(node, run_id), dropped=True)
    except OpalError as exc:
        return fail_run(node, record, exc, signer=signer)
    except Exception as exc:  # noqa: BLE001 - a fault of ours: record it without details that might hold data
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            return fail_run(node, record, LimitExceeded("the worker's task time limit was exceeded"), signer=signer)
        log.error("run %s: internal error %s", run_id, type(exc).__name__)
        return fail_run(
            node,
            record,
            InternalError(f"internal error in the worker ({type(exc).__name__}); see the worker log"),
            signer=signer,
        )


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """What steps 1–3 established for a run, without touching data."""

    ds: catalog.Dataset
    bundle: Any
    manifest: Any
    domains: dict[str, tuple[Any, ...]]


def prepare(node: Node, record: RunRecord) -> Prepared:
    """Steps 1–3 (decided without data): trust, exact bytes, params, compile policy, domains, ε.

    Every task of a run re-does them (a partition task re-fetches what it needs).
    """
    require_board_policy(node)  # no run on real data unless a board decided who may approve and run
    verify_request(node, record)
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
    # 3. data-free checks: the columns it reads, params, compile policy, domains, ε
    manifest.check_reads(catalog.SCHEMAS[ds.schema].columns, dataset=f"dataset {ds.name!r}")
    manifest.validate_params(record.params)
    from opal.release.domains import cell_count, check_cells, resolve
    from opal.sandbox import check_source

    check_source(bundle.source, filename="algorithm.py", entrypoint=manifest.entrypoint)
    domains = resolve(manifest.privacy.groups, ds.domains)
    check_cells(cell_count(domains), ds.policy.max_cells)
    ds.policy.check_epsilon(record.epsilon)
    return Prepared(ds=ds, bundle=bundle, manifest=manifest, domains=domains)


def _execute(node: Node, record: RunRecord, *, signer: Signer, runtime_for: RuntimeFor, me: str) -> Outcome:
    from opal.sandbox.params import run_check_params

    prep = prepare(node, record)
    ds, bundle, manifest, domains = prep.ds, prep.bundle, prep.manifest, prep.domains
    # averaging attack: an identical run is served the cached release, no new noise, no new spend
    # (before check_params: the released run passed it with these very bytes and parameters)
    cached = node.db.one(
        "SELECT run_id, result, result_digest FROM runs WHERE cache_key = ? AND state = 'released' AND run_id != ? "
        "ORDER BY updated LIMIT 1",
        (record.cache_key, record.run_id),
    )
    if cached is not None:
        return _finish_cached(node, record, cached, signer=signer)
    # check_params reads no data: of a partitioned dataset, any partition's runtime held (else the first)
    run_check_params(lambda: runtime_for(ds), source=bundle.source, params=record.params, table=ds.schema,
                     column=ds.unit)
    # 4. reserve budget and record the start, in one durable transaction
    if not _start(node, record, ds, subject=manifest.name, signer=signer, me=me):
        return outcome_of(get_run(node, record.run_id))
    if ds.partitioned:
        # 5–6 per partition as Celery tasks, noise once in the combining task
        from opal.worker.fanout import fan_out

        fan_out(node, record, parts=len(ds.partition_files()))
        return outcome_of(get_run(node, record.run_id))
    # 5. sandbox, on this run's pseudonyms. From here on the run is total.
    runtime = runtime_for(ds)
    contributions, units, outcome = sandbox_contributions(
        runtime, bundle.source, manifest.entrypoint, record, ds, manifest.privacy,
        read=manifest.read_map(), categorical=manifest.categorical_map(),
    )
    # 6. release gate (never refuses contributions: a malformed table is no contributions)
    from opal.release import release as gate

    def release_over(rows: pd.DataFrame | None) -> Release:
        return gate(
            rows, privacy=manifest.privacy, domains=domains, policy=ds.policy, epsilon=record.epsilon, known_units=units
        )

    try:
        released = release_over(contributions)
    except Exception as exc:  # noqa: BLE001 - total runs: a fault on data (even the task's soft time limit) must not show
        log.error("run %s: the gate failed on the contributions (%s)", record.run_id, type(exc).__name__)
        outcome = {"outcome": "no contributions", "error_type": type(exc).__name__, "where": "release gate"}
        released = release_over(None)
    if "contributions_refused" in released.diagnostics and outcome["outcome"] == "ok":
        outcome = {"outcome": "contributions refused", "message": released.diagnostics["contributions_refused"]}
    # 7. record, then return
    return finish_released(node, record, released, outcome, signer=signer)


def sandbox_contributions(
    runtime: Runtime, source: str, entrypoint: str, record: RunRecord, ds: catalog.Dataset, privacy: PrivacySpec,
    *, read: dict[str, tuple[str, ...]] | None = None, categorical: dict[str, tuple[str, ...]] | None = None,
) -> tuple[pd.DataFrame | None, RunPseudonyms | None, dict[str, Any]]:
    """(contributions or None, the run's units, the true outcome for the operator).
    ``read``: the only columns the algorithm sees (the bundle's ``Manifest.read_map``);
    ``categorical``: its text columns it sees as Categoricals (``Manifest.categorical_map``).

    Every failure of the algorithm becomes no contributions: whether it failed
    can depend on private values, so it must not show in what leaves.
    """
    from opal.release.contributions import declared_columns
    from opal.sandbox.pseudonyms import run_pseudonymised

    try:
        contributions, units = run_pseudonymised(
            runtime, table=ds.schema, column=ds.unit, source=source, entrypoint=entrypoint, params=record.params,
            columns=declared_columns(privacy), read=read, categorical=categorical,
        )
    except OpalError as exc:
        log.info("run %s: the algorithm produced no contributions (%s)", record.run_id, type(exc).__name__)
        return None, None, {
            "outcome": "no contributions",
            "error_type": type(exc).__name__,
            "exit_code": exc.exit_code,
            "message": exc.message,
        }
    except Exception as exc:  # noqa: BLE001 - e.g. a table Arrow cannot convert: no details, they may hold data
        log.error("run %s: contributions unreadable (%s)", record.run_id, type(exc).__name__)
        return None, None, {"outcome": "no contributions", "error_type": type(exc).__name__}
    return contributions, units, {"outcome": "ok"}


def _start(node: Node, record: RunRecord, ds: catalog.Dataset, *, subject: str, signer: Signer, me: str) -> bool:
    """Claim the run for this worker: reserve ε on the first start, count the attempt.

    Returns False when the attempt cap was reached (the run is failed in the
    same transaction). Raises Dropped when the run has an outcome or another
    live worker holds it.
    """
    from opal.runs._tables import ensure_run_tables

    ensure_run_tables(node.db)
    with node.db.transaction() as tx:
        (state,) = tx.execute("SELECT state FROM runs WHERE run_id = ?", (record.run_id,)).fetchone()
        if state in TERMINAL_STATES:
            raise Dropped(f"it is {state} already")
        row = tx.execute("SELECT attempts, worker FROM run_attempts WHERE run_id = ?", (record.run_id,)).fetchone()
        attempts, owner = (int(row[0]), str(row[1])) if row else (0, None)
        if state == "started" and owner not in (None, me) and is_alive(node.db, owner):
            raise Dropped(f"worker {owner} is running it")
        attempts += 1
        if attempts > MAX_ATTEMPTS:
            exc = InternalError(
                f"run {record.run_id} lost its worker in each of {MAX_ATTEMPTS} attempts; "
                "it is failed rather than retried again (see the worker logs)"
            )
            _record_failure(tx, node, record, exc, state=state, signer=signer)
            return False
        if state == "requested":
            budget.reserve(tx, dataset=ds.name, run_id=record.run_id, epsilon=record.epsilon, actor=signer.key_id)
        now = utcnow()
        tx.execute("UPDATE runs SET state = 'started', updated = ? WHERE run_id = ?", (now, record.run_id))
        tx.execute(
            "INSERT OR REPLACE INTO run_attempts(run_id, attempts, worker, claimed) VALUES (?,?,?,?)",
            (record.run_id, attempts, me, now),
        )
        node.ledger.append_in(
            tx,
            type="run_started",
            body={
                "run_id": record.run_id,
                "digest": record.digest,
                "dataset": ds.name,
                "dataset_version": ds.version,
                "epsilon_reserved": record.epsilon,
                "attempt": attempts,
            },
            signer=signer,
            subject=subject,
        )
    if attempts > 1:
        log.warning("run %s: attempt %d (its previous worker was lost)", record.run_id, attempts)
    return True


def finish_released(
    node: Node, record: RunRecord, released: Release, outcome: dict[str, Any], *, signer: Signer
) -> Outcome:
    # Only the analyst view leaves. The gate's diagnostics (rows dropped, and
    # why) and the run's true outcome are exact facts about the data: they
    # stay with the operator, and the ledger holds their digests.
    view = released.analyst_view()
    full = dict(view, diagnostics=released.diagnostics, run_outcome=outcome)  # released.to_dict(), built once
    result_digest = sha256_hex(canonical_json(view))
    decisions_digest = sha256_hex(canonical_json(full))
    with node.db.transaction() as tx:
        (state,) = tx.execute("SELECT state FROM runs WHERE run_id = ?", (record.run_id,)).fetchone()
        if state in TERMINAL_STATES:
            # cancelled, or another attempt finished first: this result never leaves
            raise Dropped(f"it is {state} already; its result is discarded")
        spent = budget.commit(tx, run_id=record.run_id, actor=signer.key_id)
        node.ledger.append_in(
            tx,
            type="run_finished",
            body={
                "run_id": record.run_id,
                "outcome": "released",
                "result_digest": result_digest,
                "epsilon_spent": spent,
                "cells_released": released.cells_released,
                "decisions_digest": decisions_digest,
                "operator_outcome_digest": sha256_hex(canonical_json(outcome)),
            },
            signer=signer,
            subject=record.algorithm.split("@")[0],
        )
        tx.execute(
            "UPDATE runs SET state = 'released', result = ?, result_digest = ?, updated = ? WHERE run_id = ?",
            (json.dumps(view), result_digest, utcnow(), record.run_id),
        )
        record_decisions(tx, run_id=record.run_id, full=full, digest=decisions_digest)
    _checkpoints.poke(node, signer)
    return outcome_of(get_run(node, record.run_id))


def _finish_cached(node: Node, record: RunRecord, cached: Any, *, signer: Signer) -> Outcome:
    result = json.loads(cached["result"])
    with node.db.transaction() as tx:
        (state,) = tx.execute("SELECT state FROM runs WHERE run_id = ?", (record.run_id,)).fetchone()
        if state in TERMINAL_STATES:
            raise Dropped(f"it is {state} already")
        returned = budget.give_back(tx, run_id=record.run_id, actor=signer.key_id)
        node.ledger.append_in(
            tx,
            type="run_finished",
            body={
                "run_id": record.run_id,
                "outcome": "released",
                "cached_from": cached["run_id"],
                "result_digest": cached["result_digest"],
                "epsilon_spent": 0.0,
                **({"epsilon_returned": returned} if returned else {}),
            },
            signer=signer,
            subject=record.algorithm.split("@")[0],
        )
        tx.execute(
            "UPDATE runs SET state = 'released', result = ?, result_digest = ?, cached_from = ?, updated = ? "
            "WHERE run_id = ?",
            (json.dumps(result), cached["result_digest"], cached["run_id"], utcnow(), record.run_id),
        )
    return outcome_of(get_run(node, record.run_id))


def _charges_failures(node: Node, dataset: str) -> bool:
    try:
        return catalog.get(node, dataset).policy.charge_failed_runs
    except OpalError:
        return True  # fail closed: an unknown policy charges


def _record_failure(tx: Any, node: Node, record: RunRecord, exc: OpalError, *, state: str, signer: Signer) -> None:
    outcome = "refused" if isinstance(exc, _REFUSALS) else "failed"
    # A run that reached run_started may have touched the data; whether it failed
    # can depend on private values, so (by policy, default on) its ε is spent.
    spent = returned = 0.0
    if state == "started" and _charges_failures(node, record.dataset):
        try:
            spent = budget.commit(tx, run_id=record.run_id, actor=signer.key_id)
        except InternalError:  # no open reservation (already settled): nothing to charge
            spent = 0.0
    else:
        returned = budget.give_back(tx, run_id=record.run_id, actor=signer.key_id)
    body: dict[str, Any] = {
        "run_id": record.run_id,
        "outcome": outcome,
        "reason": exc.message,
        "error_type": type(exc).__name__,
        "exit_code": exc.exit_code,
        "epsilon_spent": spent,
        "epsilon_returned": returned,
    }
    if spent:
        body["charged_because"] = "the run failed after it touched the data"
    node.ledger.append_in(
        tx,
        type="run_finished",
        body=body,
        signer=signer,
        subject=record.algorithm.split("@")[0],
    )
    tx.execute(
        "UPDATE runs SET state = ?, error = ?, updated = ? WHERE run_id = ?",
        (outcome, json.dumps(exc.to_dict()), utcnow(), record.run_id),
    )
    log.info("run %s %s: %s", record.run_id, outcome, type(exc).__name__)


def fail_run(node: Node, record: RunRecord, exc: OpalError, *, signer: Signer) -> Outcome:
    """Record ``exc`` as the run's outcome (refused or failed) unless it has one; return ε reserved."""
    with node.db.transaction() as tx:
        (state,) = tx.execute("SELECT state FROM runs WHERE run_id = ?", (record.run_id,)).fetchone()
        if state not in TERMINAL_STATES:  # else another delivery finished it first: record nothing twice
            _record_failure(tx, node, record, exc, state=state, signer=signer)
    return outcome_of(get_run(node, record.run_id))


class _Checkpoints:
    """Signed checkpoints after releases, at most one per ``INTERVAL`` per process.

    A lone release is checkpointed at once; under load the releases of the
    next ``INTERVAL`` share one checkpoint, signed by a timer (a checkpoint
    costs a tree sync, a signature and a durable commit).
    """

    INTERVAL = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self._pid = os.getpid()

    def poke(self, node: Node, signer: Signer) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's timer is not ours
                self._pid, self._timer, self._last = os.getpid(), None, 0.0
            if self._timer is not None:
                return  # the pending checkpoint will cover this entry
            delay = self._last + self.INTERVAL - time.monotonic()
            if delay > 0:
                self._timer = threading.Timer(delay, self._fire, (node, signer))
                self._timer.daemon = False
                self._timer.start()
                return
            self._last = time.monotonic()
        self._sign(node, signer)

    def _fire(self, node: Node, signer: Signer) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self._sign(node, signer)

    @staticmethod
    def _sign(node: Node, signer: Signer) -> None:
        try:
            node.ledger.checkpoint(signer)
        except OpalError as exc:
            log.error("checkpoint not signed: %s", exc.message)
        except Exception as exc:  # noqa: BLE001 - the next release retries
            log.error("checkpoint not signed: %s", type(exc).__name__)


_checkpoints = _Checkpoints()
