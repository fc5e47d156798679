"""The Celery application, and nothing else (Celery's own layout).

Settings are chosen for safety: JSON only (never pickle), late acks with
reject-on-worker-lost so a killed worker's run is redelivered (the pipeline is
idempotent by run id), one message prefetched at a time, time limits above the
sandbox's own, a visibility timeout above the longest allowed run.
"""

from __future__ import annotations

import os

from celery import Celery

from opal.errors import BadInputError
from opal.home import Home

__all__ = ["app", "configure", "broker_url", "queue_name", "SANDBOX_WALL_SECONDS"]

SANDBOX_WALL_SECONDS = 600
TASK_SOFT_LIMIT = SANDBOX_WALL_SECONDS + 60
TASK_HARD_LIMIT = SANDBOX_WALL_SECONDS + 120

app = Celery("opal", set_as_current=False)


def broker_url(home: Home) -> str:
    url = os.environ.get("OPAL_BROKER_URL") or home.config().get("broker_url")
    if not url:
        raise BadInputError(
            "no broker configured: start the embedded one with opal broker start, "
            "or set OPAL_BROKER_URL=redis://HOST:PORT/DB"
        )
    return str(url)


def queue_name(home: Home, dataset: str) -> str:
    prefix = os.environ.get("OPAL_QUEUE_PREFIX") or f"opal.{home.home_id}"
    return f"{prefix}.{dataset}"


def configure(home: Home) -> Celery:
    url = broker_url(home)
    app.conf.update(
        broker_url=url,
        result_backend=url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=TASK_SOFT_LIMIT,
        task_time_limit=TASK_HARD_LIMIT,
        broker_transport_options={"visibility_timeout": TASK_HARD_LIMIT * 2},
        result_backend_transport_options={"visibility_timeout": TASK_HARD_LIMIT * 2},
        result_expires=7 * 24 * 3600,
        task_track_started=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        task_default_queue=queue_name(home, "default"),
    )
    return app
