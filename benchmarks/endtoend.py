"""End to end: a real OPAL node (keys, approved bundles, registered datasets),
a real ``opal worker start`` subprocess with the dataset resident in its
sandbox zygote, runs requested, dispatched through Celery and Redis, and
their outcomes awaited, all driven in-process as ``opal run`` would.

Every run uses a distinct ε (1.0 minus a millionth per run), so no run is
served from the cache unless the cache is what is being measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.algorithms import Algorithm
from benchmarks.procmem import TreeSampler
from opal._internal.procs import stop_group
from opal.errors import InternalError

__all__ = ["BENCH_POLICY", "Deployment", "RunTiming", "choose_broker"]

# A budget no benchmark exhausts; every other rule is the default policy's.
BENCH_POLICY = {"total_epsilon": 1e9, "max_epsilon_per_run": 1.0, "default_epsilon": 1.0}
_LOCAL_REDIS = "redis://127.0.0.1:6379/15"


def choose_broker(home: Path) -> tuple[str, Any]:
    """The broker URL to use, and an embedded broker to stop afterwards (or None).

    ``OPAL_BROKER_URL``, else ``OPAL_TEST_REDIS_URL``, else a Redis on
    127.0.0.1:6379 (database 15), else the embedded one opal starts itself.
    """
    for name in ("OPAL_BROKER_URL", "OPAL_TEST_REDIS_URL"):
        if os.environ.get(name):
            return os.environ[name], None
    import redis

    try:
        if redis.Redis.from_url(_LOCAL_REDIS, socket_timeout=1).ping():
            return _LOCAL_REDIS, None
    except (redis.RedisError, OSError):
        pass
    from opal.home import Home
    from opal.worker.broker import EmbeddedRedis

    embedded = EmbeddedRedis(Home(home / "broker").ensure())
    return embedded.start(), embedded


@dataclass(frozen=True, kw_only=True)
class RunTiming:
    """One end-to-end run: total seconds, of which the request (sign, ledger append);
    whether the outcome was served from the cache."""

    seconds: float
    request_seconds: float
    state: str
    cached: bool = False
    error: str | None = None


@dataclass
class Deployment:
    """One OPAL home with an operator, a statistician and two reviewers, the
    reference bundles submitted and approved, and at most one worker at a time."""

    root: Path
    broker_url: str
    worker: subprocess.Popen[bytes] | None = None
    sampler: TreeSampler | None = None
    _runs: int = 0
    _logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        from opal.node import Node

        self.root.mkdir(parents=True, exist_ok=True)
        self.node = Node.open(self.root / "home")
        self.node.home.update_config(broker_url=self.broker_url)
        os.environ["OPAL_BROKER_URL"] = self.broker_url  # the in-process client dispatches with it

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
        env.update(OPAL_HOME=str(self.node.home.root), OPAL_BROKER_URL=self.broker_url)
        if os.environ.get("OPAL_DB_URL"):
            env["OPAL_DB_URL"] = os.environ["OPAL_DB_URL"]
        return env

    def setup(self, algorithms: list[Algorithm]) -> None:
        from opal.trust.governance import init_policy
        from opal.trust.review import approve, submit

        node = self.node
        for name, role in (
            ("olga", "operator"), ("sam", "statistician"), ("rita", "reviewer"), ("ravi", "reviewer"), ("bea", "board"),
        ):
            node.keyring.new(name, role, node.ledger)
        init_policy(node, signers=[node.keyring.signer("bea")], board=["bea"])  # the board names every role
        for algorithm in algorithms:
            submit(node, algorithm.bundle, signer=node.keyring.signer("sam"))
            for reviewer in ("rita", "ravi"):
                approve(node, algorithm.bundle.digest, signer=node.keyring.signer(reviewer))

    def register(self, name: str, path: Path) -> None:
        from opal.data import catalog
        from opal.release.policy import ReleasePolicy

        policy = ReleasePolicy.from_dict({**catalog.default_policy().to_dict(), **BENCH_POLICY})
        catalog.register(self.node, name, path, policy=policy, signer=self.node.keyring.signer("olga"))

    # -- workers -------------------------------------------------------------

    def start_worker(self, dataset: str, *, concurrency: int = 1, memory: str | None = None,
                     sample_memory: bool = True) -> None:
        """Start ``opal worker start`` on ``dataset``. ``sample_memory``: read the
        tree's memory from /proc every 50 ms while it runs (the memory sections);
        off where only time is measured, since the sampler takes CPU and the
        kernel's locks on the very processes it measures."""
        self.stop_worker()
        log = self.root / f"worker-{dataset}-{len(self._logs)}.log"
        self._logs.append(log)
        extra = ["--memory", memory] if memory else []
        with open(log, "wb") as out:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "opal", "worker", "start", "--dataset", dataset, "--key", "olga",
                 "--concurrency", str(concurrency), "--loglevel", "WARNING", *extra],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.sampler = TreeSampler(root=self.worker.pid).start() if sample_memory else None

    def stop_sampling(self) -> dict[str, Any] | None:
        """Stop sampling the worker tree's memory; its peaks so far (None if not sampled)."""
        memory = None
        if self.sampler is not None:
            self.sampler.stop()
            memory = self.sampler.to_dict()
            self.sampler = None
        return memory

    def stop_worker(self) -> dict[str, Any] | None:
        """Stop the worker; return its tree's memory peaks (if still sampled)."""
        memory = self.stop_sampling()
        proc, self.worker = self.worker, None
        if proc is not None:
            stop_group(proc, timeout=30)
        return memory

    def worker_log_tail(self) -> str:
        if not self._logs:
            return ""
        lines = self._logs[-1].read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else ""

    # -- runs ------------------------------------------------------------------

    def next_epsilon(self) -> float:
        self._runs += 1
        return 1.0 - self._runs * 1e-6

    def request(self, algorithm: Algorithm, dataset: str, *, params: dict[str, Any] | None = None,
                epsilon: float | None = None) -> Any:
        from opal.runs import request_run
        from opal.runs.dispatch import dispatch

        record = request_run(
            self.node, algorithm=algorithm.name, dataset=dataset,
            params=algorithm.params if params is None else params,
            epsilon=self.next_epsilon() if epsilon is None else epsilon,
            signer=self.node.keyring.signer("sam"),
        )
        dispatch(self.node, record)
        return record

    def outcome(self, run_id: str, *, timeout: float) -> dict[str, Any]:
        """Wait for the run's outcome in the node's runs table (its one record)."""
        return self.outcomes([run_id], timeout=timeout)[0]

    def outcomes(self, run_ids: list[str], *, timeout: float, poll: float = 0.002) -> list[dict[str, Any]]:
        """Wait for every run of ``run_ids``: one read of the runs table every
        ``poll`` seconds for all those still pending (a read is ~0.1 ms of CPU;
        a waiting client must not take the cores the worker measured needs)."""
        from opal.runs.records import TERMINAL_STATES, get_run

        pending = list(dict.fromkeys(run_ids))
        deadline = time.monotonic() + timeout
        while pending:
            marks = ",".join("?" * len(pending))
            rows = self.node.db.query(f"SELECT run_id, state FROM runs WHERE run_id IN ({marks})", tuple(pending))
            done = {row["run_id"] for row in rows if row["state"] in TERMINAL_STATES}
            pending = [r for r in pending if r not in done]
            if not pending:
                break
            if time.monotonic() > deadline:
                tail = self.worker_log_tail()
                raise InternalError(f"run {pending[0]} had no outcome after {timeout:g}s; worker log: {tail}")
            time.sleep(poll)
        out = []
        for run_id in run_ids:
            record = get_run(self.node, run_id)
            out.append({"run_id": run_id, "state": record.state, "release": record.result, "error": record.error,
                        "cached_from": record.cached_from})
        return out

    def run(self, algorithm: Algorithm, dataset: str, *, params: dict[str, Any] | None = None,
            epsilon: float | None = None, timeout: float = 900.0) -> RunTiming:
        t0 = time.perf_counter()
        record = self.request(algorithm, dataset, params=params, epsilon=epsilon)
        requested = time.perf_counter() - t0
        outcome = self.outcome(record.run_id, timeout=timeout)
        seconds = time.perf_counter() - t0
        error = outcome.get("error")
        message = None
        if error:
            message = f"{error.get('type', 'error')}: {error.get('message', '')}"[:300]
        released = outcome.get("release")
        cached = outcome.get("cached_from") is not None and isinstance(released, dict)
        return RunTiming(seconds=seconds, request_seconds=requested, state=str(outcome.get("state")),
                         cached=cached, error=message)

    def burst(
        self, algorithm: Algorithm, dataset: str, count: int, *, timeout: float = 900.0
    ) -> tuple[float, list[str]]:
        """Request ``count`` runs at once, wait for all; wall seconds and their states."""
        t0 = time.perf_counter()
        records = [self.request(algorithm, dataset) for _ in range(count)]
        states = [str(o["state"]) for o in self.outcomes([r.run_id for r in records], timeout=timeout, poll=0.005)]
        return time.perf_counter() - t0, states

    def close(self) -> None:
        self.stop_worker()
