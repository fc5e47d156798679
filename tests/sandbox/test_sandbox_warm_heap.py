"""The warm heap the zygote hands to each child (opal/sandbox/_warm.py).

It exists for speed, so what is tested here is what it must not change: a
child never sees what an earlier child wrote, and the memory limit counts
the block (it does not add to the allowance).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from opal.errors import BadInputError, LimitExceeded
from opal.sandbox import Limits, Runtime
from opal.sandbox._warm import huge_pages_available

needs_thp = pytest.mark.skipif(not huge_pages_available(), reason="no transparent huge pages here")

# In a process of its own: the block changes the C allocator's settings.
_HANDOFF = textwrap.dedent(
    r"""
    import ctypes, os, sys
    import numpy as np
    from opal.sandbox._warm import WarmHeap

    heap = WarmHeap.create(64 * 2**20)
    if heap is None:
        print("unavailable")
        sys.exit(0)
    while heap.warming():
        heap.step()
    lo, hi = heap.region()

    def in_child(body):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, body())
            os._exit(0)
        heap.hand_over()
        os.close(w)
        out = os.read(r, 100)
        os.waitpid(pid, 0)
        os.close(r)
        while heap.warming():
            heap.step()
        return out.decode()

    def write_secret():
        ctypes.memset(lo, 0x5A, hi - lo)
        return b"wrote"

    def look():
        # a view, not a copy: a copy would itself be allocated in the block
        block = np.frombuffer((ctypes.c_char * (hi - lo)).from_address(lo), dtype=np.uint8)
        return b"leftovers" if block.any() else b"zeros"

    print(in_child(write_secret), in_child(look), (hi - lo) // 2**20)
    """
)


@needs_thp
def test_a_child_never_sees_what_an_earlier_child_wrote_in_the_warm_block() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _HANDOFF], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert out[:2] == ["wrote", "zeros"]
    assert int(out[2]) >= 32  # the block was really there (MiB)


def _alloc(mib: int) -> str:
    return (
        "import numpy as np\nimport pandas as pd\n"
        "def contributions(data, params):\n"
        f"    x = np.ones({mib} * 2 ** 17)\n"
        "    return pd.DataFrame({'msisdn': [1], 'v': [float(x.sum())]})\n"
    )


@needs_thp
def test_the_memory_limit_counts_the_warm_block(cdr_path: Path) -> None:
    limits = Limits(cpu_seconds=20, wall_seconds=30, memory_bytes=768 * 2**20, warm_memory_bytes=512 * 2**20,
                    warm_memory_ratio=10**12)
    with Runtime(tables={"cdr": cdr_path}, limits=limits) as rt:
        assert rt.warm_memory_bytes == 512 * 2**20
        ok = rt.run(source=_alloc(400), entrypoint="contributions", params={})
        assert ok["v"].tolist() == [400 * 2**17]
        # 1 GiB fits in memory_bytes + the block, but not in memory_bytes alone.
        with pytest.raises(LimitExceeded) as caught:
            rt.run(source=_alloc(1024), entrypoint="contributions", params={})
        assert caught.value.exit_code == 5
        assert "memory" in caught.value.message


def test_the_warm_block_is_capped_by_memory_bytes_and_can_be_turned_off(cdr_path: Path) -> None:
    with Runtime(tables={"cdr": cdr_path}, limits=Limits(warm_memory_bytes=0)) as rt:
        assert rt.warm_memory_bytes == 0
        assert len(rt.run(source=_alloc(8), entrypoint="contributions", params={})) == 1
    if huge_pages_available():
        limits = Limits(memory_bytes=256 * 2**20, warm_memory_bytes=2**30, warm_memory_ratio=10**12)
        with Runtime(tables={"cdr": cdr_path}, limits=limits) as rt:
            assert rt.warm_memory_bytes == 256 * 2**20


@needs_thp
def test_the_warm_block_follows_the_size_of_the_data(cdr_path: Path) -> None:
    import pyarrow.parquet as pq

    in_memory = pq.read_table(cdr_path).nbytes
    huge = 2 * 2**20                                       # the block is whole huge pages
    ratio = (5.5 * huge) / in_memory                       # 5.5 huge pages' worth of this data
    with Runtime(tables={"cdr": cdr_path}, limits=Limits(warm_memory_ratio=ratio)) as rt:
        assert rt.warm_memory_bytes == 5 * huge
    with Runtime(tables={"cdr": cdr_path}, limits=Limits(warm_memory_ratio=0)) as rt:
        assert rt.warm_memory_bytes == 0


def test_warm_memory_bytes_must_not_be_negative() -> None:
    with pytest.raises(BadInputError, match="warm_memory_bytes must be 0 .off. or more, got -1"):
        Limits(warm_memory_bytes=-1)


_IDLE = textwrap.dedent(
    r"""
    import os
    from opal.sandbox._warm import idle_priority

    before = os.sched_getscheduler(0)
    with idle_priority():
        inside = os.sched_getscheduler(0)
    print(inside == os.SCHED_IDLE, os.sched_getscheduler(0) == before)
    """
)


def test_refilling_runs_at_idle_priority_and_children_are_forked_after_it_ends() -> None:
    # The zygote forks the next child right after this block: it must not inherit SCHED_IDLE.
    out = subprocess.run(
        [sys.executable, "-c", _IDLE], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out == ["True", "True"]
