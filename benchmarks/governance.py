"""``opal report`` on a large ledger of run lifecycles (the issue's bound: 100 000
entries in at most 10 s).

The ledger is built once and cached under ``bench-data/`` as an OPAL home: a
board-signed policy (``benchmarks.ledger_audit.install_policy``), then run lifecycles
(requested → started → finished) over three datasets and four algorithms, one
in ten refused, spread over 30 days, signed in a process pool, and a signed
checkpoint. The measurement is the real command, ``opal report --out``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.config import size_label
from benchmarks.timing import Timing

__all__ = ["bench_report", "ensure_run_ledger"]

_DATASETS = ("cdr", "survey", "mobility")
_ALGORITHMS = ("population_density@1.0.0", "od_matrix@1.2.0", "home_location@2.0.0", "call_volume@1.0.0")
_STEP = 3_000  # lifecycles per signing task


def _sign_lifecycles(args: tuple[bytes, int, int, int, str]) -> list[tuple[int, bytes, bytes, str, str, str]]:
    from cryptography.hazmat.primitives import serialization

    from benchmarks.ledger_audit import _signer
    from opal.canonical import canonical_json
    from opal.ledger import merkle
    from opal.ledger.records import ENTRY_DOMAIN, ENTRY_VERSION, envelope

    pem, first_index, lo, hi, key_id = args
    s = _signer("bench", serialization.load_pem_private_key(pem, password=None))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    index = first_index + 3 * lo
    for n in range(lo, hi):
        run_id = f"{n:032x}"
        algorithm = _ALGORITHMS[n % len(_ALGORITHMS)]
        when = (start + timedelta(seconds=30 * n)).isoformat().replace("+00:00", "Z")
        refused = n % 10 == 9
        bodies = [
            ("run_requested", {"run_id": run_id, "algorithm": algorithm, "digest": f"{n % 4:064x}",
                               "dataset": _DATASETS[n % 3], "params": {}, "epsilon": 0.001,
                               "requester": key_id}),
            ("run_started", {"run_id": run_id, "dataset": _DATASETS[n % 3], "epsilon_reserved": 0.001}),
            ("run_finished", {"run_id": run_id, "outcome": "refused", "reason": "privacy budget exhausted",
                              "error_type": "ReleaseRefused", "epsilon_spent": 0.0} if refused else
             {"run_id": run_id, "outcome": "released", "result_digest": f"{n:064x}", "epsilon_spent": 0.001}),
        ]
        for type_, body in bodies:
            entry = {"v": ENTRY_VERSION, "index": index, "type": type_, "subject": algorithm.split("@")[0],
                     "time": when, "actor": key_id, "actor_role": "operator", "body": body}
            signed = canonical_json(entry)
            raw = envelope(signed, s.sign(ENTRY_DOMAIN, signed))
            rows.append((index, raw, merkle.leaf_hash(raw), type_, when, algorithm.split("@")[0]))
            index += 1
    return rows


def ensure_run_ledger(data_dir: Path, entries: int, *, say: Any = print) -> Path:
    """An OPAL home whose ledger holds about ``entries`` entries of run lifecycles (cached)."""
    from cryptography.hazmat.primitives import serialization

    from benchmarks.ledger_audit import _signer, install_policy
    from opal.node import Node

    home = data_dir / f"report-ledger-{size_label(entries)}"
    marker = home / "bench-report-ledger.json"
    if marker.exists() and json.loads(marker.read_text()).get("entries") == entries:
        return home
    shutil.rmtree(home, ignore_errors=True)
    node = Node.open(home)
    say(f"report ledger {size_label(entries)}: signing {entries:,} run entries (once; cached in {home}) ...")
    t0 = time.perf_counter()
    s = _signer()
    install_policy(node.ledger, [s])
    first = node.ledger.size()
    pem = s._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    runs = (entries - first) // 3
    tasks = [(pem, first, lo, min(runs, lo + _STEP), s.key_id) for lo in range(0, runs, _STEP)]
    with get_context("fork").Pool(os.cpu_count() or 1) as pool, node.db.transaction() as tx:
        for rows in pool.imap(_sign_lifecycles, tasks):
            tx.executemany(
                "INSERT INTO ledger(idx, entry, leaf_hash, type, actor, time, subject) VALUES (?,?,?,?,?,?,?)",
                [(i, raw, leaf, t, s.key_id, when, subj) for i, raw, leaf, t, when, subj in rows],
            )
    node.ledger.checkpoint(s)
    marker.write_text(json.dumps({"entries": entries, "build_seconds": time.perf_counter() - t0}) + "\n")
    return home


def bench_report(home: Path, *, reps: int) -> dict[str, Any]:
    """Wall time of ``opal report --out`` (a fresh process each time, as the board runs it)."""
    from benchmarks.ledger import _opal

    out = home.parent / f"{home.name}-report.html"
    walls = []
    summary: dict[str, Any] = {}
    for _ in range(reps):
        wall, text = _opal(home, "report", "--out", str(out), "--json")
        walls.append(wall)
        summary = json.loads(text)
    return {"entries": int(summary.get("entries", 0)), "runs": int(summary.get("runs", 0)),
            "page_bytes": out.stat().st_size, "cli": Timing(samples=tuple(walls)).to_dict()}
