"""Handing a recorded run request to its dataset's queue, and waiting for it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opal.errors import InternalError, LimitExceeded
from opal.runs.records import RunRecord, get_run

if TYPE_CHECKING:
    from opal.node import Node

__all__ = ["dispatch", "wait"]


def dispatch(node: Node, record: RunRecord) -> None:
    from kombu.exceptions import OperationalError

    from opal.worker.celery import configure, queue_name
    from opal.worker.tasks import RUN_TASK

    app = configure(node.home)
    try:
        app.send_task(RUN_TASK, args=[record.run_id], task_id=record.run_id, queue=queue_name(node.home, record.dataset))
    except OperationalError:
        raise InternalError(
            f"run {record.run_id} is recorded but the broker is unreachable; it will be re-dispatched "
            "by opal worker recover once the broker is back"
        ) from None


def wait(node: Node, run_id: str, *, timeout: float = 600.0, on_state: Any = None) -> RunRecord:
    """Wait until the run has an outcome. The node's run record is the truth;
    the Celery result is used when this node does not see the worker's database."""
    deadline = time.monotonic() + timeout
    last = None
    delay = 0.05
    while time.monotonic() < deadline:
        record = get_run(node, run_id)
        if record.state != last and on_state is not None:
            on_state(record.state)
        last = record.state
        if record.finished:
            return record
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise LimitExceeded(f"run {run_id} has no outcome after {timeout:g} s; follow it with opal runs show {run_id}")
