"""Handing recorded run requests to their dataset's queue, and waiting for them.

The broker carries only the signed run message (``opal.runs.message``). If
the broker is down, the request stays recorded in the ledger and the ``runs``
table; ``opal worker recover`` (and every worker at start) re-dispatches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opal.errors import InternalError, LimitExceeded
from opal.runs.message import run_message
from opal.runs.records import RunRecord, get_run

if TYPE_CHECKING:
    from opal.node import Node

__all__ = ["dispatch", "dispatch_many", "wait"]


def dispatch(node: Node, record: RunRecord) -> None:
    """Put ``record`` on its dataset's queue.

    Raises:
        InternalError: the broker is unreachable (the request stays recorded).
    """
    dispatch_many(node, [record.run_id])


def dispatch_many(node: Node, run_ids: Iterable[str]) -> int:
    """Publish the run message of every run in ``run_ids`` over one connection."""
    from kombu.exceptions import OperationalError

    from opal.worker.celery import RUN_TASK, configure, queue_name

    app = configure(node.home)
    amqp = app.amqp
    sent = 0
    pending = list(run_ids)
    try:
        with app.producer_or_acquire() as producer, producer.connection._reraise_as_library_errors():
            for run_id in pending:
                row = node.db.one("SELECT dataset FROM runs WHERE run_id = ?", (run_id,))
                if row is None:
                    raise InternalError(f"no run {run_id} to dispatch")
                # What app.send_task does, minus its subscription to the result
                # channel of every task sent: the runs table is the truth here,
                # and a client must not hang on a result store that is down.
                # ignore_result: the runs table is the outcome's one record. The
                # message's own flag decides (it overrides the task's), so it is here.
                message = amqp.create_task_message(
                    run_id, RUN_TASK, [run_message(node, run_id)], {},
                    root_id=run_id, create_sent_event=False, ignore_result=True,
                )
                amqp.send_task_message(producer, RUN_TASK, message, queue=queue_name(node.home, row["dataset"]))
                sent += 1
    except (OperationalError, OSError, ConnectionError):
        left = len(pending) - sent
        raise InternalError(
            f"run {pending[sent]} is recorded but the broker is unreachable ({left} run(s) not sent); "
            "they are re-dispatched by opal worker recover once the broker is back"
        ) from None
    return sent


def wait(
    node: Node,
    run_id: str,
    *,
    timeout: float = 600.0,
    on_state: Callable[[str], object] | None = None,
    on_hint: Callable[[str], object] | None = None,
) -> RunRecord:
    """Wait until the run has an outcome; the node's ``runs`` table is the truth.

    Polls from 5 ms, backing off to 100 ms: a read of one row is far cheaper
    than the latency a coarse poll would add to every run. A run still queued
    after a few seconds while no live worker serves its dataset is named to
    ``on_hint`` once, and in the time-out error.
    """
    start = time.monotonic()
    deadline = start + timeout
    last = None
    delay = 0.005
    hinted = False
    next_check = start + _NO_WORKER_GRACE
    while True:
        record = get_run(node, run_id)
        if record.state != last and on_state is not None:
            on_state(record.state)
        last = record.state
        if record.finished:
            return record
        now = time.monotonic()
        if now >= deadline:
            break
        if not hinted and record.state == "requested" and now >= next_check:
            next_check = now + _NO_WORKER_GRACE
            if not _served(node, record.dataset):
                hinted = True
                if on_hint is not None:
                    on_hint(_no_worker(record))
        time.sleep(delay)
        delay = min(delay * 1.3, 0.1)
    if record.state == "requested" and not _served(node, record.dataset):
        raise LimitExceeded(f"run {run_id} has no outcome after {timeout:g} s: {_no_worker(record)}")
    raise LimitExceeded(f"run {run_id} has no outcome after {timeout:g} s; follow it with opal runs show {run_id}")


# How long a queued run waits before the client asks whether any worker serves it.
_NO_WORKER_GRACE = 3.0


def _served(node: Node, dataset: str) -> bool:
    from opal.worker.liveness import serving

    return bool(serving(node.db, dataset))


def _no_worker(record: RunRecord) -> str:
    return (
        f"no live worker serves dataset {record.dataset}; start one with "
        f"opal worker start --dataset {record.dataset} (the run stays queued: opal runs show {record.run_id})"
    )
