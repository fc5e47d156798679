"""Several processes append at once; a kill -9 mid-append leaves a whole, verifiable ledger."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opal.db import Database
from opal.ledger import Ledger

APPENDER = Path(__file__).parent / "ledger_appender.py"


sys.path.insert(0, str(Path(__file__).parent))
from ledger_fixtures import add_key, install_board, make_signer  # noqa: E402


def writers(ledger: Ledger, n: int) -> list[str]:
    """Seeds of ``n`` operator keys, named by trust policy v1 (the ledger's first entry)."""
    seeds = [os.urandom(32) for _ in range(n)]
    install_board(ledger, make_signer("b", "board"), [make_signer(f"w{i}", "operator", seed=s) for i, s in enumerate(seeds)])
    return [s.hex() for s in seeds]


def start(*args: str, seed: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPAL_DB_URL"}
    return subprocess.Popen(
        [sys.executable, str(APPENDER), *args, "--seed", seed], stdout=subprocess.PIPE, text=True, env=env
    )


def assert_whole(ledger: Ledger, expected: int | None = None) -> None:
    rows = ledger.db.query("SELECT idx FROM ledger ORDER BY idx")
    assert [r["idx"] for r in rows] == list(range(len(rows)))  # no gaps, no duplicates
    if expected is not None:
        assert len(rows) == expected
    report = ledger.verify()
    assert report.size == len(rows)


def four_writers(ledger: Ledger, target: list[str], n: int) -> None:
    procs = [start(*target, "--n", str(n), seed=seed) for seed in writers(ledger, 4)]
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0


def test_four_processes_append_without_gaps_or_duplicates_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "opal.db"
    four_writers(Ledger(Database(db, url="")), ["--db", str(db)], 60)
    assert_whole(Ledger(Database(db, url="")), expected=4 * 60 + 1)


def test_four_processes_append_without_gaps_or_duplicates_postgres(pg_url: str) -> None:
    four_writers(Ledger(Database(None, url=pg_url)), ["--url", pg_url], 40)
    assert_whole(Ledger(Database(None, url=pg_url)), expected=4 * 40 + 1)


@pytest.mark.parametrize("batch", ["1", "50"])
def test_kill_9_during_appends_leaves_no_half_entry(tmp_path: Path, batch: str) -> None:
    db = tmp_path / "opal.db"
    seeds = writers(Ledger(Database(db, url="")), 2)
    procs = [start("--db", str(db), "--forever", "--batch", batch, "--sleep", "0.003", seed=s) for s in seeds]
    for p in procs:
        assert p.stdout is not None
        p.stdout.readline()  # it is appending now
    time.sleep(0.2)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    conn_check = Database(db, url="")
    assert conn_check.query("PRAGMA integrity_check")[0][0] == "ok"
    ledger = Ledger(conn_check)
    assert_whole(ledger)
    if batch != "1":  # group commit is all or nothing: every batch is whole
        assert (ledger.size() - 1) % int(batch) == 0
    ledger.append(type="note", body={"after": "crash"}, signer=_signer(ledger))
    assert_whole(ledger)


def test_kill_9_during_appends_postgres(pg_url: str) -> None:
    (seed,) = writers(Ledger(Database(None, url=pg_url)), 1)
    p = start("--url", pg_url, "--forever", "--batch", "20", "--sleep", "0.003", seed=seed)
    assert p.stdout is not None
    p.stdout.readline()
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    ledger = Ledger(Database(None, url=pg_url))
    assert_whole(ledger)
    assert (ledger.size() - 1) % 20 == 0


def _signer(ledger: Ledger):  # type: ignore[no-untyped-def]
    s = make_signer("after", "operator")
    add_key(ledger, s)
    return s
