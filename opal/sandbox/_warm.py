"""Warm memory handed from the zygote to each sandbox child.

Why: a fresh child allocates every temporary of the algorithm from memory it
has never touched. On a virtual machine whose balloon hands freed guest pages
back to the host (free page reporting), touching such memory is slow: 1 GiB
takes 0.2-2.5 s here instead of 0.06 s, which made sandboxed runs up to 1.6x
slower than the same function in a long-lived process (issue #3).

How: the zygote keeps the top of its C heap as a large free block of
transparent huge pages that it has already touched (so the host backs them).
A forked child inherits the mapping; right after the fork the zygote drops
its own copy (``MADV_DONTNEED``), so the child becomes the pages' only owner
and its first write to each huge page reuses it in place, without a copy and
without the host. The child's allocator takes everything from that heap
(``_child._tune_allocator``). Between runs the zygote touches the block again,
a slice at a time, never while a request waits.

What it does not change: each run is still a fresh process; the block holds
zeros (the kernel clears the pages the zygote faults back in), never anything
a previous child wrote; the child's address-space limit counts the block
against ``memory_bytes`` (``reserve()``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["WarmHeap", "allocate_from_heap", "idle_priority"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_DEFAULT_MMAP_MAX = 65536
_MADV_DONTNEED, _MADV_HUGEPAGE, _MADV_POPULATE_WRITE = 4, 14, 23
_HUGE = 2 * 2**20
# glibc takes mallopt values as int: the free top of the heap is returned to
# the kernel once it exceeds this, so the block must stay below it.
_TRIM_THRESHOLD = 2**31 - 1
MAX_BYTES = 1536 * 2**20
_STEP = 32 * 2**20
# The zygote starts warming only after this long without a request.
SETTLE_SECONDS = 0.25


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    for name in ("mallopt", "mallinfo2", "sbrk", "malloc", "free", "madvise"):
        if not hasattr(libc, name):
            raise OSError(f"the C library has no {name}")
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_long]
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mallinfo2.restype = _MallInfo2
    return libc


def allocate_from_heap() -> None:
    """Make this process take every allocation from its C heap and keep what
    it frees: in a sandbox child, that heap starts with the warm block.

    By default glibc maps each large temporary fresh from the kernel and
    returns it on free, and Arrow (pandas' string columns) uses its own
    mimalloc/jemalloc segments, which a forked child shares copy-on-write with
    the zygote or maps fresh; on this kind of machine both are cold. RLIMIT_AS
    still bounds the total.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    mallopt(_M_TOP_PAD, 64 * 2**20)


def huge_pages_available() -> bool:
    try:
        setting = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return "[never]" not in setting


class WarmHeap:
    """The free top of this process's heap, kept touched for the next child."""

    def __init__(self, libc: Any, size: int) -> None:
        self._libc = libc
        self.size = size
        self._warm_to = 0  # [lo, _warm_to) of the current region is touched

    @classmethod
    def create(cls, size: int) -> WarmHeap | None:
        """Reserve ``size`` bytes at the top of the heap; None where that is not
        possible (not glibc, no transparent huge pages, size 0)."""
        size = min(int(size), MAX_BYTES) // _HUGE * _HUGE
        if size <= 0 or not huge_pages_available():
            return None
        try:
            libc = _libc()
        except OSError:
            return None
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        libc.mallopt(_M_MMAP_MAX, 0)
        block = libc.malloc(size + 2 * _HUGE)
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        if not block:
            return None
        libc.free(block)
        heap = cls(libc, size)
        lo, hi = heap.region()
        if hi - lo < size // 2 or libc.madvise(lo, hi - lo, _MADV_HUGEPAGE) != 0:
            return None
        return heap

    def region(self) -> tuple[int, int]:
        """The huge-page-aligned part of the heap's free top block, leaving the
        block's header and whatever the zygote allocates next alone."""
        brk = int(self._libc.sbrk(0))
        start = brk - int(self._libc.mallinfo2().keepcost)
        lo = (start + 2 * _HUGE - 1) // _HUGE * _HUGE
        hi = brk // _HUGE * _HUGE
        return lo, max(lo, hi)

    def reserve(self) -> int:
        """Bytes of the child's address space that are this block (the child's
        memory limit counts them as part of its allowance)."""
        lo, hi = self.region()
        return hi - lo

    def warming(self) -> bool:
        lo, hi = self.region()
        return max(lo, self._warm_to) < hi

    def step(self) -> None:
        """Touch the next slice of the block."""
        lo, hi = self.region()
        start = max(lo, self._warm_to)
        end = min(hi, start + _STEP)
        # Fault the pages in writable; before Linux 5.14, by writing zeros.
        if end > start and self._libc.madvise(start, end - start, _MADV_POPULATE_WRITE) != 0:
            ctypes.memset(start, 0, end - start)
        self._warm_to = end

    def hand_over(self) -> None:
        """In the zygote right after a fork: drop our copy of the block, so the
        child owns its pages alone and reuses them without copying."""
        lo, hi = self.region()
        if hi > lo:
            self._libc.madvise(lo, hi - lo, _MADV_DONTNEED)
        self._warm_to = lo


@contextlib.contextmanager
def idle_priority() -> Iterator[None]:
    """Run the body under SCHED_IDLE, then return to normal scheduling.

    Children are forked after the body, so they must never inherit the idle
    policy: if the way back is refused (an unprivileged process may lack
    RLIMIT_NICE headroom), this raises instead of going on idle.
    """
    before = os.sched_getscheduler(0)
    params = os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        yield  # not allowed to change: warm at normal priority
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, before, params)
        if os.sched_getscheduler(0) != before:
            raise OSError("could not leave idle scheduling")
