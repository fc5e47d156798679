"""The privacy budget: total ε per data source, reserved atomically before a
run, committed on release, returned when a run is refused before it touched
the data. Lives in the node's database, so it survives restarts and is shared
by every worker process of the node.

Exact: ε is held as an integer number of micro-ε (``policy.to_micro``), so
``spent`` after a thousand runs of 0.001 is exactly 1, and a run is admitted
only if ``spent + reserved + ε <= total`` in integers. A request that is not
a whole micro-ε (e.g. 1e-17) is refused before it gets here, and the policy's
``min_epsilon_per_run`` bounds how many runs a budget can pay for.

The budget belongs to the data, not to a name: a *pool*, keyed by the content
fingerprint of the data it was opened for. A second registration of the same
content joins that pool (``open_pool``), and a new version of a dataset
(``refresh``) stays in it.

All functions that change the budget take the caller's open transaction
(``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL): the check
and the reservation happen under one write lock, so parallel runs can never
overspend.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opal.errors import BadInputError, InternalError, ReleaseRefused
from opal.release.policy import MICRO, to_micro
from opal.trust.keys import utcnow

if TYPE_CHECKING:
    from opal.node import Node

__all__ = ["BudgetState", "commit", "give_back", "open_pool", "pool_of", "reserve", "show"]


def _eps(micro: int) -> float:
    """micro-ε as ε, for messages and JSON (every value is a whole micro-ε)."""
    return micro / MICRO


@dataclass(frozen=True, kw_only=True)
class BudgetState:
    dataset: str
    total_micro: int
    spent_micro: int
    reserved_micro: int
    spenders: list[dict[str, Any]]
    shared_with: list[str]

    @property
    def total(self) -> float:
        return _eps(self.total_micro)

    @property
    def spent(self) -> float:
        return _eps(self.spent_micro)

    @property
    def reserved(self) -> float:
        return _eps(self.reserved_micro)

    @property
    def left(self) -> float:
        return _eps(self.total_micro - self.spent_micro - self.reserved_micro)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "total": self.total,
            "spent": self.spent,
            "reserved": self.reserved,
            "left": self.left,
            "total_micro": self.total_micro,
            "spent_micro": self.spent_micro,
            "reserved_micro": self.reserved_micro,
            "spent_by": self.spenders,
            "shared_with": self.shared_with,
        }


def open_pool(tx: sqlite3.Connection, *, dataset: str, fingerprint: str, total_epsilon: float) -> str | None:
    """Give ``dataset`` the budget of its content.

    The pool is keyed by ``fingerprint``; if a dataset with that content
    (its current or first version) already has a pool, ``dataset`` shares it
    and the name of one owner is returned. Otherwise a new pool of
    ``total_epsilon`` is opened and ``None`` returned.
    """
    row = tx.execute(
        "SELECT o.dataset, o.pool FROM budget_owners o JOIN datasets d ON d.name = o.dataset "
        "WHERE o.pool = ? OR d.fingerprint = ? ORDER BY o.dataset LIMIT 1",
        (fingerprint, fingerprint),
    ).fetchone()
    if row is not None:
        tx.execute("INSERT INTO budget_owners(dataset, pool) VALUES (?,?)", (dataset, row[1]))
        return str(row[0])
    tx.execute(
        "INSERT INTO budget(pool, total, spent, reserved) VALUES (?,?,0,0)",
        (fingerprint, to_micro(total_epsilon, what="total_epsilon")),
    )
    tx.execute("INSERT INTO budget_owners(dataset, pool) VALUES (?,?)", (dataset, fingerprint))
    return None


def pool_of(tx: Any, dataset: str) -> str:
    row = tx.execute("SELECT pool FROM budget_owners WHERE dataset = ?", (dataset,)).fetchone()
    if row is None:
        raise BadInputError(f"dataset {dataset!r} has no budget; register it first")
    return str(row[0])


def reserve(tx: sqlite3.Connection, *, dataset: str, run_id: str, epsilon: float, actor: str) -> None:
    """Reserve ``epsilon`` of ``dataset``'s pool for ``run_id``.

    Raises:
        BadInputError: no budget, or ``epsilon`` not a whole positive micro-ε.
        ReleaseRefused: ``spent + reserved + epsilon > total``.
    """
    micro = to_micro(epsilon)
    pool = pool_of(tx, dataset)
    total, spent, reserved = (int(v) for v in tx.execute(
        "SELECT total, spent, reserved FROM budget WHERE pool = ?", (pool,)
    ).fetchone())
    if spent + reserved + micro > total:
        raise ReleaseRefused(
            f"privacy budget of dataset {dataset!r} exhausted: run needs ε={_eps(micro):g}, "
            f"{_eps(total - spent - reserved):g} of {_eps(total):g} left "
            f"(spent {_eps(spent):g}, reserved {_eps(reserved):g})"
        )
    tx.execute("UPDATE budget SET reserved = reserved + ? WHERE pool = ?", (micro, pool))
    tx.execute(
        "INSERT INTO budget_events(run_id, dataset, epsilon, state, actor, time) VALUES (?,?,?,?,?,?)",
        (run_id, dataset, micro, "reserved", actor, utcnow()),
    )


def _reservation(tx: sqlite3.Connection, run_id: str) -> tuple[str, int] | None:
    row = tx.execute(
        "SELECT dataset, epsilon FROM budget_events WHERE run_id = ? AND state = 'reserved'", (run_id,)
    ).fetchone()
    if row is None:
        return None
    settled = tx.execute(
        "SELECT 1 FROM budget_events WHERE run_id = ? AND state IN ('spent', 'returned')", (run_id,)
    ).fetchone()
    return None if settled else (str(row[0]), int(row[1]))


def commit(tx: sqlite3.Connection, *, run_id: str, actor: str) -> float:
    """Turn the run's reservation into spend; returns ε spent. Exactly once per run."""
    held = _reservation(tx, run_id)
    if held is None:
        raise InternalError(f"run {run_id} has no open budget reservation to commit")
    dataset, micro = held
    tx.execute(
        "UPDATE budget SET reserved = reserved - ?, spent = spent + ? WHERE pool = ?",
        (micro, micro, pool_of(tx, dataset)),
    )
    tx.execute(
        "INSERT INTO budget_events(run_id, dataset, epsilon, state, actor, time) VALUES (?,?,?,?,?,?)",
        (run_id, dataset, micro, "spent", actor, utcnow()),
    )
    return _eps(micro)


def give_back(tx: sqlite3.Connection, *, run_id: str, actor: str) -> float:
    """Return an open reservation (the run was refused before it touched the data)."""
    held = _reservation(tx, run_id)
    if held is None:
        return 0.0
    dataset, micro = held
    tx.execute("UPDATE budget SET reserved = reserved - ? WHERE pool = ?", (micro, pool_of(tx, dataset)))
    tx.execute(
        "INSERT INTO budget_events(run_id, dataset, epsilon, state, actor, time) VALUES (?,?,?,?,?,?)",
        (run_id, dataset, micro, "returned", actor, utcnow()),
    )
    return _eps(micro)


def show(node: Node, dataset: str | None = None) -> list[BudgetState]:
    """The budget of every dataset (or one), with the datasets sharing it."""
    sql = (
        "SELECT o.dataset AS dataset, o.pool AS pool, b.total AS total, b.spent AS spent, "
        "b.reserved AS reserved FROM budget_owners o JOIN budget b ON b.pool = o.pool"
        + (" WHERE o.dataset = ?" if dataset else "")
        + " ORDER BY o.dataset"
    )
    rows = node.db.query(sql, (dataset,) if dataset else ())
    if dataset and not rows:
        raise BadInputError(f"no dataset named {dataset!r}; see opal dataset list")
    states = []
    for r in rows:
        owners = [
            str(o["dataset"])
            for o in node.db.query("SELECT dataset FROM budget_owners WHERE pool = ? ORDER BY dataset", (r["pool"],))
        ]
        spenders = [
            {"requester": s["requester"], "runs": int(s["runs"]), "epsilon": _eps(int(s["eps"]))}
            for s in node.db.query(
                "SELECT runs.requester AS requester, COUNT(*) AS runs, SUM(e.epsilon) AS eps "
                "FROM budget_events e JOIN runs ON runs.run_id = e.run_id "
                "JOIN budget_owners o ON o.dataset = e.dataset "
                "WHERE o.pool = ? AND e.state = 'spent' GROUP BY runs.requester ORDER BY eps DESC",
                (r["pool"],),
            )
        ]
        states.append(
            BudgetState(
                dataset=r["dataset"],
                total_micro=int(r["total"]),
                spent_micro=int(r["spent"]),
                reserved_micro=int(r["reserved"]),
                spenders=spenders,
                shared_with=[o for o in owners if o != r["dataset"]],
            )
        )
    return states
