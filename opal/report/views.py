"""The board's CLI views (``opal ledger show``, ``opal budget history``), from signed entries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from opal.errors import BadInputError
from opal.ledger.records import LedgerEntry
from opal.report.history import Charge, History

if TYPE_CHECKING:
    from opal.ledger.log import Ledger

__all__ = ["budget_history", "describe_entries", "signed_names"]

_KEY_TYPES = ("trust_policy", "key_added", "key_revoked")


def _history_of(ledger: Ledger, types: Sequence[str]) -> History:
    found = sorted((e for t in types for e in ledger.entries(type=t)), key=lambda e: e.index)
    return History.from_entries(found)


def signed_names(ledger: Ledger) -> dict[str, str]:
    """Key id -> name, as the board-signed policies and ``key_added`` entries name them."""
    return _history_of(ledger, _KEY_TYPES).names


def describe_entries(ledger: Ledger, entries: Sequence[LedgerEntry]) -> list[dict[str, str]]:
    """One row per entry: who signed it, and for run entries the algorithm, dataset and
    requester of the signed ``run_requested`` entry they belong to."""
    wanted = {str(e.body.get("run_id")) for e in entries if e.type.startswith("run_")}
    history = _history_of(ledger, (*_KEY_TYPES, "run_requested") if wanted else _KEY_TYPES)
    rows = []
    for e in entries:
        b = e.body
        row = {
            "index": str(e.index),
            "time": e.time,
            "type": e.type,
            "actor": history.name(e.actor),
            "algorithm": "",
            "dataset": "",
            "requester": "",
            "about": "",
        }
        run = history.runs.get(str(b.get("run_id"))) if e.type.startswith("run_") else None
        if run is not None:
            row.update(algorithm=run.algorithm, dataset=run.dataset, requester=history.name(run.requester))
            about = f"run {run.run_id[:12]}"
            if e.type == "run_requested":
                about += f" ε={run.epsilon:g}"
            elif e.type == "run_finished":
                about += f" {b.get('outcome')} ε spent {float(b.get('epsilon_spent') or 0):g}"
            row["about"] = about
        elif e.type.startswith("bundle_"):
            row["algorithm"] = f"{b.get('name')}@{b.get('version')}" if b.get("version") else str(b.get("name"))
            row["about"] = str(b.get("reason") or "")
        elif e.type in ("key_added", "key_revoked"):
            key = str(b.get("key_id"))
            row["about"] = f"{history.name(key)} {b.get('role') or b.get('reason') or ''}".strip()
        elif e.type == "trust_policy":
            row["about"] = f"version {b.get('version')}"
        else:
            row["dataset"] = str(b.get("dataset") or b.get("name") or "")
        rows.append(row)
    return rows


def budget_history(ledger: Ledger, dataset: str | None = None) -> tuple[list[Charge], History]:
    """Every charge of ε (each ``run_finished`` with ε spent), oldest first, with the
    dataset's running total; from the signed run entries.

    Raises:
        BadInputError: ``dataset`` has no request in the ledger.
    """
    history = _history_of(ledger, (*_KEY_TYPES, "run_requested", "run_finished"))
    if dataset is not None and not any(r.dataset == dataset for r in history.runs.values()):
        raise BadInputError(f"the ledger records no run on dataset {dataset!r}; see opal budget show")
    return history.charges_of(dataset), history



