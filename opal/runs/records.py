"""The ``runs`` table: one row per run request, its state and its released result."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opal.errors import BadInputError

if TYPE_CHECKING:
    from opal.node import Node

__all__ = ["TERMINAL_STATES", "RunRecord", "get_run", "list_runs"]

TERMINAL_STATES = ("released", "refused", "failed", "cancelled")


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    run_id: str
    algorithm: str
    digest: str
    dataset: str
    params: dict[str, Any]
    epsilon: float
    requester: str
    state: str
    cache_key: str
    created: str
    updated: str
    result: dict[str, Any] | None
    result_digest: str | None
    error: dict[str, Any] | None
    cached_from: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_row(cls, row: Any) -> RunRecord:
        return cls(
            run_id=row["run_id"],
            algorithm=row["algorithm"],
            digest=row["digest"],
            dataset=row["dataset"],
            params=json.loads(row["params"]),
            epsilon=float(row["epsilon"]),
            requester=row["requester"],
            state=row["state"],
            cache_key=row["cache_key"],
            created=row["created"],
            updated=row["updated"],
            result=json.loads(row["result"]) if row["result"] else None,
            result_digest=row["result_digest"],
            error=json.loads(row["error"]) if row["error"] else None,
            cached_from=row["cached_from"] if "cached_from" in row.keys() else None,
        )

    def to_dict(self, *, with_result: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "run_id": self.run_id,
            "algorithm": self.algorithm,
            "digest": self.digest,
            "dataset": self.dataset,
            "params": self.params,
            "epsilon": self.epsilon,
            "requester": self.requester,
            "state": self.state,
            "created": self.created,
            "updated": self.updated,
            "result_digest": self.result_digest,
            "cached_from": self.cached_from,
            "error": self.error,
        }
        if with_result:
            d["result"] = self.result
        return d


def get_run(node: Node, run_id: str) -> RunRecord:
    row = node.db.one("SELECT * FROM runs WHERE run_id = ?", (run_id,))
    if row is None:
        raise BadInputError(f"no run {run_id!r}; see opal runs list")
    return RunRecord.from_row(row)


def list_runs(node: Node, *, dataset: str | None = None, state: str | None = None, limit: int = 50) -> list[RunRecord]:
    where, params = [], []
    if dataset:
        where.append("dataset = ?")
        params.append(dataset)
    if state:
        where.append("state = ?")
        params.append(state)
    sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY created DESC LIMIT {int(limit)}"
    return [RunRecord.from_row(r) for r in node.db.query(sql, params)]


def record_decisions(tx: Any, *, run_id: str, full: dict[str, Any], digest: str) -> None:
    """Keep the gate's full per-cell record (operator-only) inside the caller's transaction."""
    tx.execute(
        "INSERT OR REPLACE INTO run_decisions(run_id, record, digest) VALUES (?,?,?)",
        (run_id, json.dumps(full), digest),
    )


def run_decisions(node: Node, run_id: str) -> dict[str, Any]:
    """The operator's view of a release: every cell decision, suppressed ones by reason."""
    row = node.db.one("SELECT record, digest FROM run_decisions WHERE run_id = ?", (run_id,))
    if row is None:
        record = get_run(node, run_id)
        if record.cached_from:
            return run_decisions(node, record.cached_from)
        raise BadInputError(f"run {run_id} has no release decisions (state {record.state})")
    full: dict[str, Any] = json.loads(row["record"])
    full["decisions_digest"] = row["digest"]
    return full
