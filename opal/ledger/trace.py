"""The full lifecycle of one algorithm, read from the ledger: submitted → reviews → runs → releases → revocation."""

from __future__ import annotations

from typing import Any

from opal.errors import BadInputError
from opal.ledger.log import Ledger

__all__ = ["trace"]


def trace(ledger: Ledger, algorithm: str) -> dict[str, Any]:
    """Everything the ledger records about ``algorithm`` (``name`` or ``name@version``).

    Raises:
        BadInputError: the ledger records nothing about it.
    """
    name, _, version = algorithm.partition("@")
    events = ledger.entries(subject=name)
    versions: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    for e in events:
        b = e.body
        digest = b.get("digest")
        if e.type == "bundle_submitted":
            versions.setdefault(
                str(digest),
                {"digest": digest, "version": b.get("version"), "reviews": [], "revoked": None},
            )
            versions[str(digest)]["submitted"] = {
                "index": e.index,
                "time": e.time,
                "author": e.actor,
            }
        elif e.type in ("bundle_approved", "bundle_rejected"):
            versions.setdefault(
                str(digest),
                {"digest": digest, "version": b.get("version"), "reviews": [], "revoked": None},
            )
            versions[str(digest)]["reviews"].append(
                {
                    "index": e.index,
                    "time": e.time,
                    "reviewer": e.actor,
                    "verdict": "approve" if e.type == "bundle_approved" else "reject",
                }
            )
        elif e.type == "bundle_revoked":
            versions.setdefault(
                str(digest),
                {"digest": digest, "version": b.get("version"), "reviews": [], "revoked": None},
            )
            versions[str(digest)]["revoked"] = {
                "index": e.index,
                "time": e.time,
                "by": e.actor,
                "reason": b.get("reason"),
            }
        elif e.type in ("run_requested", "run_started", "run_finished"):
            run = runs.setdefault(str(b.get("run_id")), {"run_id": b.get("run_id")})
            step = e.type.removeprefix("run_")
            run[step] = {"index": e.index, "time": e.time, "by": e.actor}
            for field in (
                "algorithm",
                "digest",
                "dataset",
                "dataset_version",
                "outcome",
                "result_digest",
                "epsilon_spent",
                "reason",
                "cached_from",
                "cells_released",
                "cells_suppressed",
            ):
                if field in b:
                    run[field] = b[field]
    if version:
        keep = {d for d, v in versions.items() if v.get("version") == version}
        versions = {d: v for d, v in versions.items() if d in keep}
        runs = {
            r: v
            for r, v in runs.items()
            if v.get("digest") in keep or v.get("algorithm") == algorithm
        }
    if not versions and not runs:
        raise BadInputError(
            f"the ledger records nothing about algorithm {algorithm!r}; see opal ledger show"
        )
    released = [r for r in runs.values() if r.get("outcome") == "released"]
    return {
        "algorithm": algorithm,
        "versions": list(versions.values()),
        "runs": list(runs.values()),
        "summary": {
            "versions": len(versions),
            "approvals": sum(
                1 for v in versions.values() for r in v["reviews"] if r["verdict"] == "approve"
            ),
            "runs": len(runs),
            "released": len(released),
            "revoked": sum(1 for v in versions.values() if v["revoked"]),
        },
        "indexes": [e.index for e in events],
    }
