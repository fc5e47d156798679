"""Ledger benchmarks: durable appends per second (1 and 4 processes), ``opal
ledger verify`` on a large ledger, and RFC 9162 inclusion proofs.

The ledger team's own benchmark (``benchmarks.ledger_audit``) is used where it has
the piece: its append measurement and its fast ledger builder. Without it,
this module measures appends with processes of its own and builds the large
ledger itself: run lifecycles (requested → started → finished) signed in a
process pool, each process running the real ``Ledger.append_in`` against a
transaction stand-in that records the INSERT; the parent executes them in
index order. Either way the large ledger is built once and cached under
``bench-data/`` as an OPAL home, so ``opal ledger verify`` runs on it as an
auditor would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.config import child_env, size_label
from benchmarks.timing import Timing
from opal.errors import InternalError

__all__ = ["bench_appends", "bench_proofs", "bench_verify", "cli_startup", "ensure_ledger", "python_startup"]


def _team_bench() -> Any:
    """``benchmarks.ledger_audit`` (the ledger team's own benchmark) if it is there, else None."""
    try:
        from benchmarks import ledger_audit
    except ImportError:
        return None
    return ledger_audit

_CHUNK = 10_000
_KEY = "olga"
_DIGEST = "5e" * 32


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
    env["OPAL_HOME"] = str(home)
    return env


# -- durable appends -----------------------------------------------------------


def bench_appends(root: Path, *, processes: int, seconds: float, appends: int) -> dict[str, Any]:
    """Appends/s by ``processes`` processes into one fresh ledger, each entry its own commit:
    ``appends`` entries in all with ``benchmarks.ledger_audit``, else for ``seconds``."""
    team = _team_bench()
    if team is not None and hasattr(team, "bench_appends"):
        folder = root / f"team-appends-{processes}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            rate = float(team.bench_appends(folder, appends, processes, 1))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        done = appends // processes * processes
        return {"processes": processes, "entries": done, "seconds": done / rate if rate else 0.0,
                "per_second": rate, "source": "benchmarks.ledger_audit.bench_appends"}
    return _own_appends(root, processes=processes, seconds=seconds)


def _own_appends(root: Path, *, processes: int, seconds: float) -> dict[str, Any]:
    from opal.node import Node

    home = root / f"appends-{processes}"
    shutil.rmtree(home, ignore_errors=True)
    node = Node.open(home)
    node.keyring.new(_KEY, "operator", node.ledger)
    start = time.time() + 2.0 + 0.5 * processes  # time for every child to import and open the database
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks._append_child", str(home), _KEY, repr(start), repr(seconds)],
            env=child_env(_env(home)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(processes)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            tail = (err.strip().splitlines() or ["no output"])[-1]
            raise InternalError(f"ledger append process failed: {tail}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    entries = sum(r["entries"] for r in reports)
    window = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    size = node.ledger.size()
    shutil.rmtree(home, ignore_errors=True)
    return {
        "processes": processes,
        "entries": entries,
        "seconds": window,
        "per_second": entries / window if window > 0 else 0.0,
        "ledger_size": size,
        "source": "benchmarks._append_child",
    }


# -- a large ledger ----------------------------------------------------------------


class _RecordingTx:
    """Stands in for the write transaction ``Ledger.append_in`` is given: answers
    the next-index query, records every other statement."""

    def __init__(self, next_index: int) -> None:
        self.next_index = next_index
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, params: Any = ()) -> _RecordingTx:
        if sql.lstrip().upper().startswith("SELECT"):
            self._row: tuple[Any, ...] | None = (self.next_index,)
        else:
            self.statements.append((sql, tuple(params)))
            self._row = None
            self.next_index += 1
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._row


def _event(index: int) -> tuple[str, dict[str, Any], str]:
    """A realistic run-lifecycle event for ledger position ``index``."""
    run = f"{index // 3:032x}"
    step = index % 3
    if step == 0:
        return "run_requested", {
            "run_id": run, "algorithm": "population_density@1.0.0", "digest": _DIGEST, "dataset": "cdr",
            "dataset_version": "ab" * 32, "params": {"start_day": 0, "end_day": index % 14},
            "epsilon": 0.5, "requester": "cd" * 32, "request_signature": "ef" * 44,
        }, "population_density"
    if step == 1:
        return "run_started", {
            "run_id": run, "digest": _DIGEST, "dataset": "cdr", "dataset_version": "ab" * 32, "epsilon_reserved": 0.5,
        }, "population_density"
    return "run_finished", {
        "run_id": run, "outcome": "released", "result_digest": f"{index:064x}", "epsilon_spent": 0.5,
        "cells_released": 150, "cells_suppressed": 18, "suppressed_by_reason": {"below_threshold": 18},
    }, "population_density"


def _build_chunk(home: str, first: int, start: int, stop: int) -> list[tuple[str, tuple[Any, ...]]]:
    """Sign the events for ledger positions [start, stop) (events are numbered from ``first``)."""
    from opal.ledger import Ledger
    from opal.node import Node

    signer = Node.open(home).keyring.signer(_KEY)
    ledger = Ledger(None, origin="bench")  # type: ignore[arg-type]  # append_in uses only the tx
    tx = _RecordingTx(start)
    for index in range(start, stop):
        type_, body, subject = _event(index - first)
        ledger.append_in(tx, type=type_, body=body, signer=signer, subject=subject)
    return tx.statements


def ensure_ledger(data_dir: Path, entries: int, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """An OPAL home whose ledger holds ``entries`` signed entries and a signed checkpoint (cached)."""
    from opal.node import Node

    home = data_dir / f"ledger-{size_label(entries)}"
    marker = home / "bench-ledger.json"
    if marker.exists():
        info: dict[str, Any] = json.loads(marker.read_text())
        if info.get("entries") == entries:
            say(f"ledger {size_label(entries)}: cached ({entries:,} entries)")
            return info
    shutil.rmtree(home, ignore_errors=True)
    node = Node.open(home)
    say(f"ledger {size_label(entries)}: signing {entries:,} entries (once; cached in {home}) ...")
    t0 = time.perf_counter()
    team = _team_bench()
    if team is not None and hasattr(team, "build_ledger"):
        ledger, signer = team.build_ledger(node.home.db_path, entries, os.cpu_count() or 1)
        ledger.checkpoint(signer)
        source = "benchmarks.ledger_audit.build_ledger"
    else:
        _own_build(node, entries, say)
        source = "benchmarks.ledger"
    info = {"entries": entries, "home": str(home), "build_seconds": time.perf_counter() - t0, "source": source}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    say(f"ledger {size_label(entries)}: built in {info['build_seconds']:.1f}s ({source})")
    return info


def _own_build(node: Any, entries: int, say: Callable[[str], None]) -> None:
    home = node.home.root
    node.keyring.new(_KEY, "operator", node.ledger)
    first = node.ledger.size()
    ranges = [(a, min(a + _CHUNK, entries)) for a in range(first, entries, _CHUNK)]
    done = first
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_build_chunk, str(home), first, a, b) for a, b in ranges]
        for future in futures:
            statements = future.result()
            with node.db.transaction() as tx:
                for sql, params in statements:
                    tx.execute(sql, params)
            done += len(statements)
            if done % (10 * _CHUNK) < _CHUNK:
                say(f"  {done:,} / {entries:,} entries")
    if node.ledger.size() != entries:
        raise InternalError(f"the benchmark ledger holds {node.ledger.size()} entries, expected {entries}")
    node.ledger.checkpoint(node.keyring.signer(_KEY))


def _opal(home: Path, *args: str, timeout: float = 3600) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "opal", *args], env=_env(home), capture_output=True, text=True,
                          timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise InternalError(f"opal {' '.join(args)} exited {proc.returncode}: {tail}")
    return seconds, proc.stdout


def bench_verify(home: Path, *, reps: int) -> dict[str, Any]:
    """``opal ledger verify --json``: wall time of the command, and the time it reports."""
    walls, inner = [], []
    report: dict[str, Any] = {}
    for _ in range(reps):
        # a full re-audit each time (an auditor's state would make every later run incremental)
        state = home.parent / f"{home.name}-audit-state.json"
        wall, out = _opal(home, "ledger", "verify", "--json", "--full", "--state", str(state))
        report = json.loads(out)
        walls.append(wall)
        inner.append(float(report.get("seconds", wall)))
    return {
        "entries": int(report.get("size", 0)),
        "cli": Timing(samples=tuple(walls)).to_dict(),
        "verify": Timing(samples=tuple(inner)).to_dict(),
    }


def bench_proofs(home: Path, *, proofs: int, reps: int) -> dict[str, Any]:
    """Inclusion proofs: ``opal ledger prove inclusion`` (a cold process), and in
    a warm process: building the tree from the database, then one proof + its
    verification."""
    from opal.ledger import merkle
    from opal.node import Node

    node = Node.open(home)
    size = node.ledger.size()
    rng = random.Random(11)  # which entries to prove: bench choice, not noise
    cli = []
    for _ in range(reps):
        wall, _ = _opal(home, "ledger", "prove", "inclusion", str(rng.randrange(size)), "--json")
        cli.append(wall)
    t0 = time.perf_counter()
    tree = node.ledger.tree()
    tree_seconds = time.perf_counter() - t0
    root = tree.root()
    samples = []
    for _ in range(proofs):
        index = rng.randrange(size)
        t0 = time.perf_counter()
        proof = tree.inclusion_proof(index)
        merkle.verify_inclusion(leaf_hash=tree.leaf(index), index=index, size=tree.size, proof=proof, root=root)
        samples.append(time.perf_counter() - t0)
    return {
        "entries": size,
        "cli": Timing(samples=tuple(cli)).to_dict(),
        "tree_build_seconds": tree_seconds,
        "proof": Timing(samples=tuple(samples)).to_dict(samples=False),
    }


def cli_startup(home: Path, *, reps: int) -> Timing:
    """``opal --help``: the interpreter and CLI start-up every command pays."""
    return Timing(samples=tuple(_opal(home, "--help")[0] for _ in range(reps)))


def python_startup(*, reps: int) -> Timing:
    """``python -c pass`` (this venv's interpreter and site): the floor under any CLI command."""
    import sys

    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        samples.append(time.perf_counter() - t)
    return Timing(samples=tuple(samples))
