"""Generate one benchmark dataset in a process of its own, so its peak memory
(VmHWM) is the generator's alone. Prints one JSON line.

    python -m benchmarks._synth_child OUT SUBSCRIBERS DAYS SEED [PARTS KEY]

With PARTS and KEY, OUT is a partitioned dataset directory written partition
by partition as the rows are generated (``opal dataset synth --parts``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.procmem import own_peak_bytes
from opal.data.synth import synthesize


def main() -> None:
    out, subscribers, days, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    parts, key = (int(sys.argv[5]), sys.argv[6]) if len(sys.argv) > 6 else (None, None)
    t0 = time.perf_counter()
    summary = synthesize(out, subscribers=subscribers, days=days, seed=seed, parts=parts, key=key)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": summary.rows, "subscribers": subscribers, "days": days, "seed": seed,
                      "bytes": summary.bytes, "seconds": seconds, "peak_bytes": own_peak_bytes(),
                      "parts": parts}))


if __name__ == "__main__":
    main()
