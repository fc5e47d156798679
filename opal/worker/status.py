"""What the workers of this node are doing: live workers (Celery inspect),
their datasets and runs in flight, and each dataset queue's depth (Redis LLEN)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opal.data import catalog
from opal.errors import InternalError

if TYPE_CHECKING:
    from opal.node import Node

__all__ = ["status"]


def status(node: Node, *, timeout: float = 1.0) -> dict[str, Any]:
    """Live workers serving this node's queues, queue depths and run counts.

    Raises:
        InternalError: the broker is unreachable.
    """
    import redis
    from kombu.exceptions import OperationalError

    from opal.worker.celery import broker_url, configure, queue_name, queue_prefix
    from opal.worker.recovery import broker_redis, queue_keys

    app = configure(node.home)
    prefix = queue_prefix(node.home) + "."
    url = broker_url(node.home)
    try:
        inspect = app.control.inspect(timeout=timeout)
        queues = inspect.active_queues() or {}
        active = inspect.active() or {}
        stats = inspect.stats() or {}
        client = broker_redis(url)
        depths = []
        for ds in catalog.list_datasets(node):
            q = queue_name(node.home, ds.name)
            depths.append(
                {"dataset": ds.name, "queue": q, "depth": int(sum(client.llen(k) for k in queue_keys(q)))}
            )
    except (OperationalError, redis.RedisError, OSError) as exc:
        raise InternalError(f"cannot reach the broker ({type(exc).__name__}); is it running?") from None
    workers = []
    for name in sorted(queues):
        mine = [str(q.get("name")) for q in queues[name] or [] if str(q.get("name", "")).startswith(prefix)]
        if not mine:
            continue  # a worker of another node on the same broker
        st = stats.get(name) or {}
        pool = st.get("pool") or {}
        workers.append(
            {
                "name": name,
                "datasets": [q[len(prefix):] for q in mine],
                "queues": mine,
                "pid": st.get("pid"),
                "concurrency": pool.get("max-concurrency"),
                "processed": sum((st.get("total") or {}).values()),
                "runs_in_flight": [
                    {"run_id": t.get("id"), "started": t.get("time_start"), "worker_pid": t.get("worker_pid")}
                    for t in active.get(name) or []
                ],
            }
        )
    counts = {
        str(r["state"]): int(r["n"]) for r in node.db.query("SELECT state, COUNT(*) AS n FROM runs GROUP BY state")
    }
    return {
        "broker": catalog.redact_url(url),
        "workers": workers,
        "queues": depths,
        "runs": counts,
        "runs_in_flight": sum(len(w["runs_in_flight"]) for w in workers),
    }
