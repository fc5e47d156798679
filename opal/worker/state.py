"""What a worker process holds for its lifetime: the node, its signing key,
and one resident sandbox runtime per dataset (per partition of a partitioned
dataset, as many as the memory budget holds), keyed by the dataset's version
(a new version — the file or table changed and was re-registered or
refreshed — loads a new runtime and stops the old one)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from opal.node import Node

if TYPE_CHECKING:
    from opal.data.catalog import Dataset
    from opal.sandbox import Limits, Runtime
    from opal.trust.keyring import Signer

__all__ = [
    "close_runtimes",
    "limits",
    "memory_budget",
    "node",
    "partition_estimate",
    "resident",
    "resident_estimate",
    "runtime_for",
    "signer",
]

_lock = threading.Lock()
_node: Node | None = None
_pid: int | None = None
_runtimes: OrderedDict[str, tuple[str, Runtime]] = OrderedDict()  # least recently used first
_costs: dict[str, int] = {}


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


def runtime_for(
    ds: Dataset,
    part: int | None = None,
    *,
    read: Mapping[str, Iterable[str]] | None = None,
    categorical: Mapping[str, Iterable[str]] | None = None,
) -> Runtime:
    """The resident runtime of ``ds`` (of its partition ``part``), holding at
    least the columns ``read`` names (table → columns: the ``reads`` of the
    bundle to run; None: every column). A partitioned dataset asked for as a
    whole is for a check that reads no data (``check_params``): it gets any
    partition's runtime this process holds, whatever its columns, else
    partition 0's.

    Partition runtimes stay resident while their estimated size fits this
    process's memory budget (``memory_budget``); beyond it the least recently
    used are stopped, so a process holds what it serves, not the dataset. A
    runtime loaded to stream a partition holds only the columns its run reads
    (the others are never decoded), its ``categorical`` text columns as
    Categoricals; one kept resident holds every column, as text.
    """
    from opal.errors import OpalError
    from opal.sandbox import Runtime

    index = (part or 0) if ds.partitioned else None
    key = ds.name if index is None else f"{ds.name}/{index}"
    with _lock:
        if part is None and index is not None:  # the dataset as a whole (a data-free check): any partition held
            for name in reversed(_runtimes):
                version, held_rt = _runtimes[name]
                if name.split("/")[0] == ds.name and version == ds.version:
                    _runtimes.move_to_end(name)
                    return held_rt
        held = _runtimes.get(key)
        if held is not None and held[0] == ds.version:
            _runtimes.move_to_end(key)
            current = held[1]
            if current.holds(read):
                return current
            try:  # streamed in for a run that read fewer columns: all of them now
                current.reload(tables={ds.schema: ds.partition_files()[index] if index is not None else ds.path})
                return current
            except OpalError:
                _runtimes.pop(key)
                _costs.pop(key, None)
                current.close()  # a fresh runtime below reports what is wrong
        for name in [k for k, (v, _) in _runtimes.items() if k.split("/")[0] == ds.name and v != ds.version]:
            _runtimes.pop(name)[1].close()  # a new version: every runtime of the old one goes
        file = ds.partition_files()[index] if index is not None else ds.path
        run_limits = limits()
        if index is not None:
            run_limits = _partition_limits(run_limits, file)
        _costs[key] = partition_estimate(file, run_limits)
        reused = _make_room(ds, keep=key, need=_costs[key]) if index is not None else None
        _evict(keep=key, need=_costs[key])
        rt: Runtime | None = None
        if reused is not None:
            try:
                reused.reload(tables={ds.schema: file}, limits=run_limits, read=read, categorical=categorical)
                rt = reused
            except OpalError:
                reused.close()  # a fresh runtime below reports what is wrong
        if rt is None:
            rt = Runtime(tables={ds.schema: file}, limits=run_limits)
        _runtimes[key] = (ds.version, rt)
        return rt


def _make_room(ds: Dataset, *, keep: str, need: int) -> Runtime | None:
    """When ``keep`` (a partition of ``ds``) does not fit beside what is held,
    the least recently used partition runtime of the same dataset version, taken
    out to be reloaded with it: a worker that streams the partitions of a
    dataset larger than its memory loads each into a running zygote instead of
    starting one per task (docs/scale.md)."""
    held = sum(_costs.get(k, 0) for k in _runtimes if k != keep)
    if held + need <= memory_budget():
        return None
    for name, (version, rt) in _runtimes.items():  # least recently used first
        if name != keep and "/" in name and name.split("/")[0] == ds.name and version == ds.version:
            del _runtimes[name]
            _costs.pop(name, None)
            return rt
    return None


# Measured at 10 M rows (docs/scale.md): a zygote holds ~180 MB of interpreter,
# numpy, pandas and pyarrow, and ~180 bytes a CDR row of data and unit dictionary.
_ZYGOTE_BASE = 180 << 20
_BYTES_PER_ROW = 180
# The warm heap a zygote keeps for its children's temporaries (opal/sandbox/_warm.py)
# is 1 GiB for a 10 M-row file; a partition's follows its rows, at least 64 MiB.
_WARM_PER_ROW = 108
_WARM_FLOOR = 64 << 20


def _rows(file: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(file).metadata.num_rows) if file.suffix == ".parquet" else file.stat().st_size // 40
    except Exception:  # noqa: BLE001 - unreadable here: the runtime reports it when it loads
        return 0


def _partition_limits(base: Limits, file: Path) -> Limits:
    """``base`` with a warm heap sized to the partition: a fixed 1 GiB per
    partition zygote would make memory follow the number of partitions."""
    from opal.sandbox import Limits

    warm = min(base.warm_memory_bytes, max(_WARM_FLOOR, _rows(file) * _WARM_PER_ROW))
    return Limits.from_dict({**base.to_dict(), "warm_memory_bytes": warm - warm % (2 << 20)})


def resident_estimate(file: Path, warm_bytes: int = 0) -> int:
    """Bytes a runtime holding ``file`` (with a warm heap of ``warm_bytes``) is expected to keep resident."""
    return _ZYGOTE_BASE + _rows(file) * _BYTES_PER_ROW + warm_bytes


def partition_estimate(file: Path, base: Limits) -> int:
    """Bytes a partition runtime of ``file`` under ``base`` limits keeps resident."""
    return resident_estimate(file, _partition_limits(base, file).warm_memory_bytes)


def memory_budget() -> int:
    """Bytes of resident runtimes this process may hold: ``OPAL_WORKER_MEMORY``
    (``opal worker start --memory``, default half the machine) over the
    worker's pool processes."""
    raw = os.environ.get("OPAL_WORKER_MEMORY")
    total = int(raw) if raw and raw.isdigit() else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    return max(1, total // max(1, int(os.environ.get("OPAL_WORKER_CONCURRENCY", "1"))))


def _evict(*, keep: str, need: int) -> None:
    budget = memory_budget()
    held = sum(_costs.get(k, 0) for k in _runtimes if k != keep)
    for name in list(_runtimes):
        if held + need <= budget:
            return
        if name != keep:
            held -= _costs.pop(name, 0)
            _runtimes.pop(name)[1].close()


def resident() -> dict[str, str]:
    """Runtime name (dataset, or dataset/partition) → version of the runtimes this process holds."""
    with _lock:
        return {name: version for name, (version, _) in _runtimes.items()}


def close_runtimes() -> None:
    with _lock:
        for _, rt in _runtimes.values():
            rt.close()
        _runtimes.clear()
        _costs.clear()
