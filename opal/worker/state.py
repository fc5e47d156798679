"""What a worker process holds for its lifetime: the node, its signing key,
and one resident sandbox runtime per dataset, keyed by the dataset's version
(a new version — the file or table changed and was re-registered or
refreshed — loads a new runtime and stops the old one)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from opal.node import Node

if TYPE_CHECKING:
    from opal.data.catalog import Dataset
    from opal.sandbox import Limits, Runtime
    from opal.trust.keyring import Signer

__all__ = ["close_runtimes", "limits", "node", "resident", "runtime_for", "signer"]

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
    # re-read each run: a revoked operator key stops signing at once
    return n.keyring.signer_for(os.environ.get("OPAL_WORKER_KEY") or None, "operator")


DEFAULT_REQUIRED_LAYERS = ("restricted_python", "clean_environment", "rlimits", "seccomp")


def limits() -> Limits:
    """Per-run sandbox limits of this worker.

    The operator's ``governance/sandbox.toml`` under ``OPAL_HOME`` sets limits
    and the isolation layers that must be active (fail closed: without the
    file, compile policy, clean environment, rlimits and seccomp are
    required). The wall limit is ``--run-timeout`` (``OPAL_RUN_TIMEOUT``);
    CPU time is allowed up to at least the same bound.
    """
    import math
    import tomllib

    from opal.errors import BadInputError
    from opal.sandbox import Limits
    from opal.worker.celery import run_timeout

    settings: dict[str, object] = {"require_layers": DEFAULT_REQUIRED_LAYERS}
    # not node(): runtime_for() calls this while holding _lock
    from opal.home import Home

    path = Home.resolve(os.environ.get("OPAL_HOME")).governance_dir / "sandbox.toml"
    if path.exists():
        try:
            settings.update(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise BadInputError(f"{path}: not valid TOML ({exc}); fix the sandbox policy") from None
    from dataclasses import fields

    unknown = sorted(set(settings) - {f.name for f in fields(Limits)})
    if unknown:
        raise BadInputError(f"{path}: unknown key(s) {', '.join(unknown)}; see governance/sandbox.toml")
    wall = run_timeout()
    base = Limits.from_dict(settings)
    return Limits.from_dict(
        {**base.to_dict(), "wall_seconds": wall, "cpu_seconds": max(base.cpu_seconds, math.ceil(wall))}
    )


def runtime_for(ds: Dataset) -> Runtime:
    from opal.sandbox import Runtime

    with _lock:
        held = _runtimes.get(ds.name)
        if held is not None and held[0] == ds.version:
            return held[1]
        if held is not None:
            held[1].close()
        rt = Runtime(tables={ds.schema: ds.path}, limits=limits())
        _runtimes[ds.name] = (ds.version, rt)
        return rt


def resident() -> dict[str, str]:
    """Dataset name → version of the runtimes this process holds."""
    with _lock:
        return {name: version for name, (version, _) in _runtimes.items()}


def close_runtimes() -> None:
    with _lock:
        for _, rt in _runtimes.values():
            rt.close()
        _runtimes.clear()
