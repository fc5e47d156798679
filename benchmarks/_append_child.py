"""One appending process of the ledger benchmark: waits until START (epoch
seconds), then appends single entries, each its own durable transaction,
until START + SECONDS. Prints one JSON line: entries and the window used.

    python -m benchmarks._append_child HOME KEY START SECONDS
"""

from __future__ import annotations

import json
import os
import sys
import time

from opal.node import Node


def main() -> None:
    home, key, start, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    node = Node.open(home)
    signer = node.keyring.signer(key)
    node.ledger.size()  # open the database before the window starts
    delay = start - time.time()
    if delay > 0:
        time.sleep(delay)
    began = time.time()
    stop = began + seconds
    count = 0
    while time.time() < stop:
        node.ledger.append(type="bench_append", body={"pid": os.getpid(), "i": count}, signer=signer)
        count += 1
    print(json.dumps({"entries": count, "began": began, "ended": time.time()}))


if __name__ == "__main__":
    main()
