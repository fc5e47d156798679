"""(a′) for the benchmark: each algorithm called directly in a process whose
allocator keeps everything it frees.

The plain pandas figure (a) is what a worker process would see. On a virtual
machine that hands freed memory back to its host, a long-lived process that
frees its temporaries pays to fault them in again, while the sandbox child
starts on the zygote's warm heap (``opal.sandbox._warm``). (a′) removes that
difference from the direct side: glibc serves every allocation from a heap it
never trims and Arrow allocates through it, and every algorithm has run once
before it is timed. It is the best case for plain pandas here, so b/a′ is the
sandbox's own cost.

Driven by the harness over stdin/stdout: the dataset path as argument, then
one algorithm name per line in, the seconds the call took per line out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from opal.sandbox._warm import allocate_from_heap


def main(argv: list[str]) -> None:
    allocate_from_heap()  # as a sandbox child does
    from benchmarks.algorithms import algorithms
    from benchmarks.datasets import load_frame

    frame, _, _ = load_frame(Path(argv[0]))
    by_name = {a.name: a for a in algorithms()}
    views: dict[str, Any] = {}
    for line in sys.stdin:
        algorithm = by_name[line.strip()]
        if algorithm.name not in views:
            views[algorithm.name] = algorithm.view(frame)
            algorithm.direct(views[algorithm.name])
        own = views[algorithm.name]
        t = time.perf_counter()
        algorithm.direct(own)
        print(time.perf_counter() - t, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
