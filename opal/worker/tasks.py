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

__all__ = ["RUN_TASK", "run_task"]

log = logging.getLogger("opal.worker")


@app.task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
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
