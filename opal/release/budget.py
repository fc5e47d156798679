"""The privacy budget: total ε per dataset, reserved atomically before a run,
committed on release, returned on failure. Lives in the node's database, so it
survives restarts and is shared by every worker process of the node.

All functions that change the budget take the caller's open transaction
(``BEGIN IMMEDIATE`` on SQLite): the check and the reservation happen under
one write lock, so parallel runs can never overspend.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opal.errors import BadInputError, InternalError, ReleaseRefused
from opal.trust.keys import utcnow

if TYPE_CHECKING:
    from opal.node import Node

__all__ = ["reserve", "commit", "give_back", "BudgetState", "show"]

_SLACK = 1e-9  # float rounding only; never a way to overspend in practice


@dataclass(frozen=True, kw_only=True)
class BudgetState:
    dataset: str
    total: float
    spent: float
    reserved: float
    spenders: list[dict[str, Any]]

    @property
    def left(self) -> float:
        return max(0.0, self.total - self.spent - self.reserved)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "total": self.total,
            "spent": round(self.spent, 12),
            "reserved": round(self.reserved, 12),
            "left": round(self.left, 12),
            "spent_by": self.spenders,
        }


def reserve(tx: sqlite3.Connection, *, dataset: str, run_id: str, epsilon: float, actor: str) -> None:
    row = tx.execute("SELECT total, spent, reserved FROM budget WHERE dataset = ?", (dataset,)).fetchone()
    if row is None:
        raise BadInputError(f"dataset {dataset!r} has no budget; register it first")
    total, spent, reserved = row
    if spent + reserved + epsilon > total + _SLACK:
        left = max(0.0, total - spent - reserved)
        raise ReleaseRefused(
            f"privacy budget of dataset {dataset!r} exhausted: run needs ε={epsilon:g}, "
            f"{left:g} of {total:g} left (spent {spent:g}, reserved {reserved:g})"
        )
    tx.execute("UPDATE budget SET reserved = reserved + ? WHERE dataset = ?", (epsilon, dataset))
    tx.execute(
        "INSERT INTO budget_events(run_id, dataset, epsilon, state, actor, time) VALUES (?,?,?,?,?,?)",
        (run_id, dataset, epsilon, "reserved", actor, utcnow()),
    )


def _reservation(tx: sqlite3.Connection, run_id: str) -> tuple[str, float] | None:
    row = tx.execute(
        "SELECT dataset, epsilon FROM budget_events WHERE run_id = ? AND state = 'reserved'", (run_id,)
    ).fetchone()
    if row is None:
        return None
    settled = tx.execute(
        "SELECT 1 FROM budget_events WHERE run_id = ? AND state IN ('spent', 'returned')", (run_id,)
    ).fetchone()
    return None if settled else (row[0], float(row[1]))


def commit(tx: sqlite3.Connection, *, run_id: str, actor: str) -> float:
    """Turn the run's reservation into spend; returns ε spent. Exactly once per run."""
    held = _reservation(tx, run_id)
    if held is None:
        raise InternalError(f"run {run_id} has no open budget reservation to commit")
    dataset, epsilon = held
    tx.execute(
        "UPDATE budget SET reserved = reserved - ?, spent = spent + ? WHERE dataset = ?",
        (epsilon, epsilon, dataset),
    )
    tx.execute(
        "INSERT INTO budget_events(run_id, dataset, epsilon, state, actor, time) VALUES (?,?,?,?,?,?)",
        (run_id, dataset, epsilon, "spent", actor, utcnow()),
    )
    return epsilon


def give_back(tx: sqlite3.Connection, *, run_id: str, actor: str) -> float:
    """Return an open reservation (the run failed before anything was released)."""
    held = _reservation(tx, run_id)
    if held is None:
        return 0.0
    dataset, epsilon = held
    tx.execute("UPDATE budget SET reserved = reserved - ? WHERE dataset = ?", (epsilon, dataset))
    tx.execute(
        "INSERT INTO budget_events(run_id, dataset, epsilon, state, actor, time) VALUES (?,?,?,?,?,?)",
        (run_id, dataset, epsilon, "returned", actor, utcnow()),
    )
    return epsilon


def show(node: Node, dataset: str | None = None) -> list[BudgetState]:
    sql = "SELECT * FROM budget" + (" WHERE dataset = ?" if dataset else "") + " ORDER BY dataset"
    rows = node.db.query(sql, (dataset,) if dataset else ())
    if dataset and not rows:
        raise BadInputError(f"no dataset named {dataset!r}; see opal dataset list")
    states = []
    for r in rows:
        spenders = [
            {"requester": s["requester"], "runs": int(s["runs"]), "epsilon": round(float(s["eps"]), 12)}
            for s in node.db.query(
                "SELECT runs.requester AS requester, COUNT(*) AS runs, SUM(e.epsilon) AS eps "
                "FROM budget_events e JOIN runs ON runs.run_id = e.run_id "
                "WHERE e.dataset = ? AND e.state = 'spent' GROUP BY runs.requester ORDER BY eps DESC",
                (r["dataset"],),
            )
        ]
        states.append(
            BudgetState(
                dataset=r["dataset"],
                total=float(r["total"]),
                spent=float(r["spent"]),
                reserved=float(r["reserved"]),
                spenders=spenders,
            )
        )
    return states
