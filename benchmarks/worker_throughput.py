"""Benchmark: runs/s end to end through Celery on this node, and the latency a
run adds over its own compute time.

    python -m benchmarks.worker_throughput [--runs 300] [--workers 2] [--latency-runs 30]

A fresh node in a temporary home (10 000-row CDR dataset, the ``spin_count``
bundle submitted and approved), real ``opal worker start`` processes and a
real Redis (``OPAL_BROKER_URL``, else ``OPAL_TEST_REDIS_URL``, else
127.0.0.1:6379 db 15, else the embedded one). Each run has distinct params,
so nothing is served from the cache.

- compute: the sandbox run plus the release gate, in-process on a warm
  runtime (what a run costs with no queue, ledger or trust check around it);
- latency: one run at a time, request → outcome seen by the requester;
  "added" is latency minus compute (request signing, ledger appends, trust
  check, broker hops, polling);
- throughput: ``--runs`` runs requested at once, until the last outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from opal._internal.procs import stop_group

__all__ = ["main"]


def _compute_seconds(sc: Any, n: int) -> float:
    from opal.bundle.registry import Bundle
    from opal.data import catalog
    from opal.release import release
    from opal.release.domains import resolve
    from opal.sandbox import Runtime
    from opal.sandbox.pseudonyms import run_pseudonymised

    ds = catalog.get(sc.node, sc.dataset)
    bundle = Bundle.from_folder(sc.node.home.root / "bundles" / "spin_count")
    times = []
    domains = resolve(bundle.manifest.privacy.groups, ds.domains)
    with Runtime(tables={ds.schema: ds.path}) as rt:
        for i in range(n + 2):
            t = time.perf_counter()
            contributions, units = run_pseudonymised(
                rt, table=ds.schema, column=ds.unit, source=bundle.source, entrypoint="contributions",
                params={"tag": i},
            )
            release(contributions, privacy=bundle.manifest.privacy, domains=domains, policy=ds.policy,
                    epsilon=0.01, known_units=units)
            if i >= 2:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.worker_throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=300, help="runs requested at once for throughput")
    parser.add_argument("--latency-runs", type=int, default=30, help="sequential runs for latency")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one pool process each)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import subprocess
    import sys

    from benchmarks.endtoend import choose_broker
    from benchmarks.scenario import build
    from opal.release.policy import ReleasePolicy
    from opal.runs import request_run
    from opal.runs.dispatch import dispatch_many, wait

    with tempfile.TemporaryDirectory(prefix="opal-bench-") as tmp:
        root = Path(tmp)
        url, embedded = choose_broker(root)
        os.environ["OPAL_BROKER_URL"] = url
        policy = ReleasePolicy.from_dict({"total_epsilon": 1e9, "max_epsilon_per_run": 1.0, "default_epsilon": 0.01})
        sc = build(root / "home", subscribers=1000, days=2, policy=policy)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
        env.update(OPAL_HOME=str(sc.node.home.root), OPAL_BROKER_URL=url)
        procs = []
        try:
            for i in range(args.workers):
                with open(root / f"worker-{i}.log", "wb") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "opal", "worker", "start", "--dataset", sc.dataset, "--key", "olga",
                         "--loglevel", "INFO"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            deadline = time.monotonic() + 120
            while not all(
                " ready." in (root / f"worker-{i}.log").read_text(errors="replace") for i in range(args.workers)
            ):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit("workers did not start; see their logs")
                time.sleep(0.1)
            sam = sc.node.keyring.signer("sam")
            tag = iter(range(10**9))

            def submit(n: int) -> list[str]:
                ids = [request_run(sc.node, algorithm="spin_count", dataset=sc.dataset, params={"tag": next(tag)},
                                   epsilon=0.01, signer=sam).run_id for _ in range(n)]
                dispatch_many(sc.node, ids)
                return ids

            for r in submit(2 * args.workers):  # warm-up: zygotes loaded, connections open
                wait(sc.node, r, timeout=120)
            compute = _compute_seconds(sc, 20)
            latencies = []
            for _ in range(args.latency_runs):
                t = time.perf_counter()
                (r,) = submit(1)
                assert wait(sc.node, r, timeout=120).state == "released"
                latencies.append(time.perf_counter() - t)
            t = time.perf_counter()
            ids = submit(args.runs)
            states = [wait(sc.node, r, timeout=900).state for r in ids]
            elapsed = time.perf_counter() - t
        finally:
            for p in procs:
                stop_group(p, timeout=30)
            if embedded is not None:
                embedded.stop()
    latency = statistics.median(latencies)
    report = {
        "dataset_rows": 10_000,
        "workers": args.workers,
        "compute_ms": round(compute * 1000, 1),
        "latency_ms_median": round(latency * 1000, 1),
        "latency_ms_p90": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))] * 1000, 1),
        "added_ms_median": round((latency - compute) * 1000, 1),
        "throughput_runs": args.runs,
        "throughput_runs_per_s": round(args.runs / elapsed, 1),
        "released": states.count("released"),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"compute per run (sandbox + gate, in-process):  {report['compute_ms']} ms")
        print(
            "latency per run, one at a time (median / p90): "
            f"{report['latency_ms_median']} / {report['latency_ms_p90']} ms"
        )
        print(f"added over compute (median):                   {report['added_ms_median']} ms   (target <= 300)")
        print(f"throughput, {args.runs} runs at once on {args.workers} worker(s):  "
              f"{report['throughput_runs_per_s']} runs/s   (target >= 20)")
    return report


if __name__ == "__main__":  # pragma: no cover
    main()
