"""Starting a worker: one Celery worker serving one dataset's queue."""

from __future__ import annotations

import atexit
import os
import socket

from opal.data import catalog
from opal.node import Node
from opal.worker.celery import configure, queue_name

__all__ = ["start_worker"]


def start_worker(node: Node, *, dataset: str, key: str | None, concurrency: int = 1, loglevel: str = "INFO") -> None:
    ds = catalog.get(node, dataset)               # fail early on an unknown dataset
    signer = node.keyring.signer_for(key, "operator")  # and on a missing operator key
    os.environ["OPAL_HOME"] = str(node.home.root)
    os.environ["OPAL_WORKER_KEY"] = signer.name
    app = configure(node.home)
    import opal.worker.tasks  # noqa: F401  (registers the task)
    from opal.worker import state

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
