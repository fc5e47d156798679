"""Resident memory of a process tree, read from ``/proc`` (Linux; psutil is
not a dependency). ``VmHWM`` is a process's peak resident set; ``VmRSS`` its
current one. Forked children share pages with their parent until written,
so a sum over a tree over-counts what the tree really holds."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ProcPeak", "TreeSampler", "own_peak_bytes", "status_kib", "tree"]

_PROC = Path("/proc")


def status_kib(pid: int | str, field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` in KiB, or None if unreadable."""
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            parts = line.split()
            return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return None


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages divided among their sharers, so a
    sum over a tree of forked processes counts each page once."""
    try:
        text = (_PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def own_peak_bytes() -> int | None:
    """This process's peak resident set (VmHWM), in bytes."""
    kib = status_kib("self", "VmHWM")
    return kib * 1024 if kib is not None else None


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) > 1:
            parents[int(entry.name)] = int(rest[1])
    return parents


def tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _role(pid: int, root: int, depth: int) -> str:
    try:
        cmd = (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = ""
    if "opal.sandbox._zygote" in cmd and depth <= 2:
        return "sandbox zygote (resident data)"
    if pid == root:
        return "worker main process"
    if depth == 1:
        return "celery pool process"
    return "sandbox run child"


@dataclass
class ProcPeak:
    role: str
    peak_bytes: int = 0


@dataclass
class TreeSampler:
    """Samples a process tree's memory in a thread while measurements run.

    Records each process's VmHWM (its own peak, kept by the kernel) and the
    largest sum of VmRSS over the tree seen at one sampling instant. Short-lived
    run children are caught only if alive at a sample (every ``interval`` s).
    """

    root: int
    interval: float = 0.05
    peaks: dict[int, ProcPeak] = field(default_factory=dict)
    tree_rss_peak: int = 0
    tree_pss_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        depth_of = {self.root: 0}
        parents = _parents()
        pids = tree(self.root)
        total = pss = 0
        for pid in pids:
            depth, cur = 0, pid
            while cur != self.root and cur in parents and depth < 8:
                cur, depth = parents[cur], depth + 1
            depth_of[pid] = depth
            hwm = status_kib(pid, "VmHWM")
            rss = status_kib(pid, "VmRSS")
            if hwm is None:
                continue
            peak = self.peaks.get(pid)
            if peak is None:
                peak = self.peaks[pid] = ProcPeak(role=_role(pid, self.root, depth))
            peak.peak_bytes = max(peak.peak_bytes, hwm * 1024)
            total += (rss or 0) * 1024
            pss += _pss_kib(pid) * 1024
        self.tree_rss_peak = max(self.tree_rss_peak, total)
        self.tree_pss_peak = max(self.tree_pss_peak, pss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except OSError:
                pass

    def start(self) -> TreeSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="opal-bench-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        try:
            self.sample()
        except OSError:
            pass
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def by_role(self) -> dict[str, int]:
        """Largest VmHWM per role (the run children: the largest one seen)."""
        roles: dict[str, int] = {}
        for peak in self.peaks.values():
            roles[peak.role] = max(roles.get(peak.role, 0), peak.peak_bytes)
        return roles

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_role_peak_bytes": self.by_role(),
            "tree_rss_peak_bytes": self.tree_rss_peak,
            "tree_pss_peak_bytes": self.tree_pss_peak,
            "processes_seen": len(self.peaks),
            "sampler_pid": os.getpid(),
        }
