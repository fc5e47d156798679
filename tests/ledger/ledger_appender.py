"""A worker process for the concurrency tests: appends N entries to a shared ledger.

python ledger_appender.py (--db PATH | --url URL) --n N [--batch B] [--forever]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ledger_fixtures import make_signer

from opal.db import Database
from opal.ledger import Ledger


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db")
    p.add_argument("--url", default="")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--forever", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0, help="pause between commits")
    p.add_argument("--seed", required=True, help="hex seed of this writer's operator key (named in the policy)")
    a = p.parse_args()
    ledger = Ledger(Database(Path(a.db) if a.db else None, url=a.url), origin="opal/test")
    me = make_signer("w", "operator", seed=bytes.fromhex(a.seed))
    done = 0
    while a.forever or done < a.n:
        if a.batch > 1:
            ledger.append_many(
                [
                    {"type": "note", "body": {"i": done + k, "pad": "x" * 200}}
                    for k in range(a.batch)
                ],
                signer=me,
            )
            done += a.batch
        else:
            ledger.append(type="note", body={"i": done}, signer=me)
            done += 1
        if done % 50 == 0:
            print(done, flush=True)
        if a.sleep:
            time.sleep(a.sleep)


if __name__ == "__main__":
    main()
