"""Celery tasks: explicitly named, take ids, re-fetch what they need, call one
library function, never wait on another task.

The one task, ``opal.run``, takes one argument: the signed run message
(``opal.runs.message``). Anything else — another shape, an unknown run, a
signature that is not the requester's — is logged and dropped: the message is
acknowledged and removed, no state changes, and the worker serves on. (Content
that is not JSON never reaches this code: ``accept_content=["json"]`` makes
kombu refuse it before it is deserialized.)
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Ignore, Reject

from opal.errors import OpalError
from opal.runs.message import check_message
from opal.runs.records import TERMINAL_STATES
from opal.worker import state
from opal.worker.celery import RUN_TASK, app
from opal.worker.pipeline import execute_run

__all__ = ["COMBINE_TASK", "PARTITION_TASK", "RUN_TASK", "combine_task", "partition_task", "run_task"]

PARTITION_TASK = "opal.run_partition"
COMBINE_TASK = "opal.combine_run"
# The combining task polls for late partitions this often, for at most the
# run's wall limit plus the task margins; then the missing ones count as lost.
_COMBINE_POLL = 0.5
log = logging.getLogger("opal.worker")


# ignore_result: the runs table is the outcome's one record (clients read it,
# never Celery's result store). A message's own ignore_result overrides this:
# opal.runs.dispatch sets it too.
@app.task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,  # type: ignore[untyped-decorator]
          ignore_result=True)
def run_task(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    task_id = str(getattr(self.request, "id", ""))[:64]
    node = state.node()
    try:
        if kwargs or len(args) != 1:
            from opal.errors import BadInputError

            raise BadInputError("not a run message: expected exactly one positional argument")
        run_id = check_message(node, args[0])
        if task_id != run_id:
            from opal.errors import BadInputError

            raise BadInputError(f"run message for {run_id} travels under another task id")
    except OpalError as exc:
        log.warning("rejected run message (task id %r): %s", task_id, exc.message)
        raise Reject(exc.message, requeue=False) from None
    outcome = execute_run(node, run_id, signer=state.signer(), runtime_for=state.runtime_for)
    if outcome.pop("dropped", False) and outcome["state"] not in TERMINAL_STATES:
        raise Ignore()  # another live worker holds the run: leave its result alone
    return outcome


def _ids(run_id: Any, part: Any = 0) -> tuple[str, int]:
    """Partition and combine messages carry only ids; anything else is dropped."""
    import re

    if not isinstance(run_id, str) or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise Reject("not a run id", requeue=False)
    if not isinstance(part, int) or isinstance(part, bool) or part < 0:
        raise Reject("not a partition number", requeue=False)
    return run_id, part


@app.task(name=PARTITION_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def partition_task(self: Any, run_id: Any, part: Any) -> dict[str, Any]:
    """One partition of a partitioned run (``opal.worker.fanout.run_partition``).

    Never raises: a header task that failed would stop the chord, and the run
    must end by its own rules (a missing partition counts as lost)."""
    from opal.worker.fanout import run_partition
    from opal.worker.liveness import local_worker

    run_id, part = _ids(run_id, part)
    node = state.node()
    try:
        dataset = node.db.one("SELECT dataset FROM runs WHERE run_id = ?", (run_id,))
        me = local_worker(node, dataset=dataset["dataset"] if dataset else None)
        return run_partition(node, run_id, part, runtime_for=state.runtime_for, me=me)
    except OpalError as exc:
        log.warning("run %s partition %d: %s", run_id, part, exc.message)
        return {"run_id": run_id, "part": part, "error": type(exc).__name__}
    except Exception as exc:  # noqa: BLE001 - a fault of ours: named, never its details (they may hold data)
        log.error("run %s partition %d: internal error %s", run_id, part, type(exc).__name__)
        return {"run_id": run_id, "part": part, "error": type(exc).__name__}


@app.task(name=COMBINE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def combine_task(self: Any, run_id: Any) -> dict[str, Any]:
    """Noise once and record a partitioned run (``opal.worker.fanout.combine_run``)."""
    from opal.worker.celery import run_timeout
    from opal.worker.fanout import combine_run, fail_missing

    run_id, _ = _ids(run_id)
    node = state.node()
    outcome = combine_run(node, run_id, signer=state.signer())
    if outcome is None:
        if self.request.retries * _COMBINE_POLL >= run_timeout() + 180:
            return fail_missing(node, run_id, signer=state.signer())
        raise self.retry(countdown=_COMBINE_POLL, max_retries=None)
    return outcome
