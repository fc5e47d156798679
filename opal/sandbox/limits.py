"""Resource limits and required isolation layers for one sandboxed run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from opal.errors import BadInputError

__all__ = ["Limits", "LAYERS"]

# Isolation layers, in the order a run passes through them.
LAYERS: tuple[str, ...] = (
    "restricted_python",  # compile policy + attribute/call guards (always on)
    "clean_environment",  # empty env, no inherited fds, empty temporary cwd
    "rlimits",  # CPU, address space, file size 0, open files, processes
    "seccomp",  # no sockets, no exec/fork, no file writes (pyseccomp)
    "network_namespace",  # empty network namespace: no interfaces at all
    "unprivileged_user",  # the child runs as an unprivileged uid (nobody)
    "ipc_namespace",  # a fresh IPC namespace per run: no earlier run's segments
    "pid_namespace",  # each run is process 1 of its own PID namespace
    "empty_filesystem",  # each run's root is an empty read-only tmpfs: no host path
)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-run limits. ``memory_bytes`` is address space the job may add on top
    of the resident, shared dataset."""

    cpu_seconds: int = 60
    wall_seconds: float = 120.0
    memory_bytes: int = 6 * 2**30
    max_output_rows: int = 20_000_000
    max_output_bytes: int = 1 * 2**30
    # Caps the trusted side applies to the contributions table while it reads
    # it from the pipe, before any pandas work (issue #15): columns, the byte
    # length of any text label, and the memory the worker may spend on it.
    max_output_columns: int = 32
    max_label_bytes: int = 256
    gate_memory_bytes: int = 4 * 2**30
    max_open_files: int = 64
    max_threads: int = 64
    # Memory the zygote keeps touched and hands to each child (opal/sandbox/_warm.py);
    # part of memory_bytes, held resident per dataset between runs: this
    # fraction of the loaded tables' size, at most warm_memory_bytes (issue #17:
    # a worker's memory follows its data); either 0 turns it off.
    warm_memory_bytes: int = 1 * 2**30
    warm_memory_ratio: float = 0.5
    # Layers that must be active or the runtime refuses to start / run.
    require_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "require_layers":
                unknown = [name for name in value if name not in LAYERS]
                if unknown:
                    raise BadInputError(
                        f"unknown isolation layer {unknown[0]!r} in require_layers; "
                        f"known layers: {', '.join(LAYERS)}"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadInputError(f"limit {f.name} must be a number, got {type(value).__name__}")
            if f.name in ("warm_memory_bytes", "warm_memory_ratio"):
                if not math.isfinite(value) or value < 0:
                    raise BadInputError(f"limit {f.name} must be 0 (off) or more, got {value}")
                continue
            if not math.isfinite(value) or value <= 0:
                raise BadInputError(f"limit {f.name} must be positive, got {value}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["require_layers"] = list(self.require_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "require_layers" in kwargs:
            kwargs["require_layers"] = tuple(kwargs["require_layers"])
        return cls(**kwargs)
