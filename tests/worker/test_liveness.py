"""Leases on node-wide chores (opal/worker/liveness.py)."""

from __future__ import annotations

from pathlib import Path

from opal.db import Database
from opal.worker.liveness import take_lease


def test_one_holder_at_a_time_until_the_lease_runs_out(tmp_path: Path) -> None:
    db = Database(tmp_path / "node.db", url="")
    assert take_lease(db, "recovery:cdr", "node-a", seconds=10, now=100.0)
    assert not take_lease(db, "recovery:cdr", "node-b", seconds=10, now=105.0)
    assert take_lease(db, "recovery:cdr", "node-a", seconds=10, now=105.0)       # the holder renews
    assert not take_lease(db, "recovery:cdr", "node-b", seconds=10, now=114.0)
    assert take_lease(db, "recovery:cdr", "node-b", seconds=10, now=115.5)       # a silent holder is replaced
    assert take_lease(db, "recovery:other", "node-a", seconds=10, now=115.5)     # chores are leased apart
