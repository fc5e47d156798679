"""What a worker process holds for its lifetime: the node, its signing key,
and one resident sandbox runtime per dataset (reloaded when the dataset's
version changes)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from opal.node import Node

if TYPE_CHECKING:
    from opal.data.catalog import Dataset
    from opal.sandbox import Runtime
    from opal.trust.keyring import Signer

__all__ = ["node", "signer", "runtime_for", "close_runtimes"]

_lock = threading.Lock()
_node: Node | None = None
_pid: int | None = None
_runtimes: dict[str, tuple[str, Runtime]] = {}


def node() -> Node:
    global _node, _pid
    with _lock:
        if _node is None or _pid != os.getpid():
            _node = Node.open(os.environ.get("OPAL_HOME"))
            _pid = os.getpid()
        return _node


def signer() -> Signer:
    n = node()
    return n.keyring.signer_for(os.environ.get("OPAL_WORKER_KEY") or None, "operator")


def runtime_for(ds: Dataset) -> Runtime:
    from opal.sandbox import Runtime

    with _lock:
        held = _runtimes.get(ds.name)
        if held is not None and held[0] == ds.version:
            return held[1]
        if held is not None:
            held[1].close()
        rt = Runtime(tables={ds.schema: ds.path})
        _runtimes[ds.name] = (ds.version, rt)
        return rt


def close_runtimes() -> None:
    with _lock:
        for _, rt in _runtimes.values():
            rt.close()
        _runtimes.clear()
