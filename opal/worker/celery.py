"""The Celery application, and nothing else (Celery's own layout).

Settings are chosen for safety:

- JSON only, never pickle (``accept_content``): kombu refuses any other
  content type before a byte of it is deserialized;
- late acks with reject-on-worker-lost, so a run whose worker process died
  is redelivered; the pipeline is idempotent by run id and caps attempts
  (``opal.worker.pipeline.MAX_ATTEMPTS``);
- one message prefetched at a time per process;
- task time limits above the sandbox's own wall limit (the sandbox kills a
  slow run first and the run is recorded as failed with the limit named);
- a broker visibility timeout above the longest allowed run, so Redis does not
  hand a run that is still running to a second worker;
- a message that is not a decodable envelope is logged and dropped
  (``opal.worker._transport``), never the end of the worker;
- results expire; workers reconnect to the broker forever (a Redis restart
  must not end a worker), clients give up fast (the request is recorded and
  ``opal worker recover`` re-dispatches it).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

from opal.errors import BadInputError
from opal.home import Home

__all__ = [
    "DEFAULT_RUN_TIMEOUT",
    "RUN_TASK",
    "SANDBOX_WALL_SECONDS",
    "app",
    "broker_url",
    "configure",
    "queue_name",
    "queue_prefix",
    "run_timeout",
    "settings",
]

# The name of the one task (opal.worker.tasks); here so that a client sending
# it does not import the worker's pipeline.
RUN_TASK = "opal.run"

# The sandbox wall limit of one run when neither the worker (--run-timeout)
# nor OPAL_RUN_TIMEOUT says otherwise.
DEFAULT_RUN_TIMEOUT = 600.0
SANDBOX_WALL_SECONDS = DEFAULT_RUN_TIMEOUT
# The sandbox kills a job at its wall limit + 15 s (its backstop); the task's
# soft limit comes after that, the hard limit after the soft one.
_SOFT_MARGIN = 60.0
_HARD_MARGIN = 120.0
_RESULT_EXPIRES = 24 * 3600

app = Celery("opal", set_as_current=False)
_configured: dict[str, str] = {}
_clients: dict[str, Celery] = {}
_lock = threading.Lock()


def broker_url(home: Home) -> str:
    url = os.environ.get("OPAL_BROKER_URL") or home.config().get("broker_url")
    if not url:
        raise BadInputError(
            "no broker configured: start the embedded one with opal broker start, "
            "or set OPAL_BROKER_URL=redis://HOST:PORT/DB"
        )
    return str(url)


def queue_prefix(home: Home) -> str:
    return os.environ.get("OPAL_QUEUE_PREFIX") or f"opal.{home.home_id}"


def queue_name(home: Home, dataset: str) -> str:
    return f"{queue_prefix(home)}.{dataset}"


def run_timeout(value: float | None = None) -> float:
    """The sandbox wall limit of one run: ``value``, else ``OPAL_RUN_TIMEOUT``, else 600 s."""
    if value is None:
        env = os.environ.get("OPAL_RUN_TIMEOUT")
        value = float(env) if env else DEFAULT_RUN_TIMEOUT
    if not (value > 0):
        raise BadInputError(f"the run timeout must be a positive number of seconds, found {value!r}")
    return float(value)


def settings(url: str, *, home: Home, timeout: float | None = None) -> dict[str, Any]:
    wall = run_timeout(timeout)
    hard = wall + _HARD_MARGIN
    # Redis hands an unacknowledged message to another consumer after this;
    # it must outlast the longest run (recovery handles dead workers sooner).
    visibility = max(2 * hard, 3600.0)
    conf: dict[str, Any] = {
        "broker_url": url,
        "result_backend": url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": wall + _SOFT_MARGIN,
        "task_time_limit": hard,
        "broker_transport_options": {"visibility_timeout": visibility},
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "result_expires": _RESULT_EXPIRES,
        "task_track_started": False,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        # clients: three quick tries, then the request waits for opal worker recover
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "redis_socket_connect_timeout": 5,
        "task_default_queue": queue_name(home, "default"),
    }
    if url.startswith(("redis://", "rediss://")):
        # kombu's Redis transport with junk messages dropped instead of ending the worker
        conf["broker_transport"] = _HARDENED
    elif url.startswith("redis+socket://"):
        # kombu takes the transport of a "name+socket://" URL from the name, never
        # from broker_transport: the embedded broker's socket reaches the same
        # transport under an alias (the result backend keeps the plain URL)
        conf["broker_url"] = _SOCKET_ALIAS + url[len("redis") :]
    return conf


_HARDENED = "opal.worker._transport:Transport"
_SOCKET_ALIAS = "opal-redis"
TRANSPORT_ALIASES.setdefault(_SOCKET_ALIAS, _HARDENED)


def configure(home: Home, *, timeout: float | None = None) -> Celery:
    """The Celery app for ``home``'s broker.

    The first call configures the module's ``app`` (the one the worker's tasks
    are registered on); a later call for another broker URL gets its own
    client app, so one process can talk to two brokers (tests do).
    """
    url = broker_url(home)
    conf = settings(url, home=home, timeout=timeout)
    with _lock:
        if not _configured or _configured.get("url") == url:
            app.conf.update(conf)
            _configured["url"] = url
            return app
        client = _clients.get(url)
        if client is None:
            client = Celery("opal-client", set_as_current=False)
            client.conf.update(conf)
            _clients[url] = client
        return client
