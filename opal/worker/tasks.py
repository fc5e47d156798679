"""Celery tasks: explicitly named, take ids, re-fetch what they need, call one
library function, never wait on another task."""

from __future__ import annotations

import logging
import re
from typing import Any

from opal.worker.celery import app
from opal.worker.pipeline import execute_run
from opal.worker import state

__all__ = ["run_task", "RUN_TASK"]

RUN_TASK = "opal.run"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
log = logging.getLogger("opal.worker")


@app.task(name=RUN_TASK, acks_late=True, reject_on_worker_lost=True)
def run_task(run_id: Any) -> dict[str, Any]:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        log.warning("rejected malformed run message (run id is not 32 hex characters)")
        return {"run_id": None, "state": "rejected", "error": {"type": "BadInputError", "message": "malformed run message", "exit_code": 2}}
    node = state.node()
    return execute_run(node, run_id, signer=state.signer(), runtime_for=state.runtime_for)
