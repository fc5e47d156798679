"""Starting a worker: one Celery worker serving one dataset's queue.

Before it consumes, the worker refreshes the dataset (a changed file or table
is a new version), and recovers the dataset's runs that lost their message or
their worker; then it re-runs that recovery periodically, one worker at a
time under a lease (``OPAL_RECOVERY_INTERVAL`` seconds, default 30, 0 turns
it off), so a lost message never waits for a human. Each pool process loads the dataset into its sandbox runtime as
it starts, so the first run does not pay for it.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
from typing import Any

from opal.data import catalog
from opal.errors import BadInputError, OpalError
from opal.node import Node
from opal.worker.celery import configure, queue_name, run_timeout

__all__ = ["parse_memory", "start_worker"]

log = logging.getLogger("opal.worker")


def _preload(**_: Any) -> None:
    """In each pool process: load the dataset (the partitions that fit) resident, off the start-up path."""
    from opal.worker import state

    def load() -> None:
        try:
            ds = catalog.get(state.node(), os.environ["OPAL_WORKER_DATASET"])
            if not ds.partitioned:
                state.runtime_for(ds)
                return
            # the partitions that fit this process's share of --memory, in order
            budget, used, base = state.memory_budget(), 0, state.limits()
            for part, file in enumerate(ds.partition_files()):
                used += state.partition_estimate(file, base)
                if used > budget and part > 0:
                    break
                state.runtime_for(ds, part)
        except Exception as exc:  # noqa: BLE001 - the first run retries and records the error
            log.warning("dataset not preloaded: %s", getattr(exc, "message", type(exc).__name__))

    threading.Thread(target=load, name="opal-preload", daemon=True).start()


def start_worker(
    node: Node,
    *,
    dataset: str,
    key: str | None,
    concurrency: int = 1,
    loglevel: str = "INFO",
    timeout: float | None = None,
    recover_at_start: bool = True,
    memory: int | None = None,
) -> None:
    """Serve ``dataset``'s queue in the foreground until SIGTERM / Ctrl-C.

    ``timeout`` is the sandbox wall limit of one run (default ``OPAL_RUN_TIMEOUT`` or 600 s).
    """
    from celery.signals import worker_process_init, worker_process_shutdown

    signer = node.keyring.signer_for(key, "operator")  # fail early on a missing operator key
    interval = _sweep_interval()
    catalog.get(node, dataset)                          # and on an unknown dataset
    ds = catalog.refresh(node, dataset, signer=signer)
    wall = run_timeout(timeout)
    os.environ["OPAL_HOME"] = str(node.home.root)
    os.environ["OPAL_WORKER_KEY"] = signer.name
    os.environ["OPAL_WORKER_DATASET"] = ds.name
    os.environ["OPAL_RUN_TIMEOUT"] = repr(wall)
    os.environ["OPAL_WORKER_CONCURRENCY"] = str(concurrency)
    if memory is not None:
        os.environ["OPAL_WORKER_MEMORY"] = str(memory)
    level = getattr(logging, loglevel.upper(), logging.INFO)
    logging.basicConfig(level=level, format="[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
    logging.getLogger("opal").setLevel(level)
    app = configure(node.home, timeout=wall)
    import opal.worker.tasks  # noqa: F401  (registers the task)
    from opal.worker import state
    from opal.worker.liveness import local_worker
    from opal.worker.recovery import recover, start_sweeper

    me = local_worker(node, dataset=ds.name)   # a live worker serves the dataset from now on
    if interval > 0:
        start_sweeper(node, signer=signer, dataset=ds.name, holder=me, interval=interval)
    if recover_at_start:
        try:
            report = recover(node, signer=signer, dataset=ds.name)
            if report.redispatched or report.failed:
                log.warning("recovered at start: %s", report.to_dict())
        except OpalError as exc:
            log.warning("recovery at start skipped: %s", exc.message)

    worker_process_init.connect(_preload, weak=False)
    worker_process_shutdown.connect(lambda **_: state.close_runtimes(), weak=False)
    atexit.register(state.close_runtimes)
    app.worker_main(
        argv=[
            "worker",
            "--queues", queue_name(node.home, ds.name),
            "--concurrency", str(concurrency),
            "--hostname", f"opal-{ds.name}-{os.getpid()}@{socket.gethostname()}",
            "--loglevel", loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _sweep_interval() -> float:
    from opal.worker.recovery import DEFAULT_SWEEP_SECONDS

    raw = os.environ.get("OPAL_RECOVERY_INTERVAL")
    try:
        value = float(raw) if raw else DEFAULT_SWEEP_SECONDS
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise BadInputError(
            f"OPAL_RECOVERY_INTERVAL must be a number of seconds >= 0 (0 turns the sweep off), found {raw!r}"
        )
    return value


def parse_memory(text: str) -> int:
    """``8G``, ``512M``, ``2048K`` or bytes → bytes."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not m or float(m.group(1)) <= 0:
        raise BadInputError(f"--memory must be a size such as 8G or 512M, found {text!r}")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))
