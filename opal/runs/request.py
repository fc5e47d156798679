"""Requesting a run: resolve the bundle, record the request in the ledger, hand
it to the dataset's queue. The run id is fixed here, before anything runs."""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any

from opal.bundle.manifest import version_key
from opal.canonical import canonical_json, digest_json
from opal.data import catalog
from opal.errors import BadInputError
from opal.runs.records import RunRecord, get_run
from opal.trust.keys import utcnow

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.keyring import Signer

__all__ = ["REQUEST_DOMAIN", "cache_key", "request_run", "resolve_bundle"]

REQUEST_DOMAIN = "run-request"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def resolve_bundle(node: Node, ref: str) -> tuple[str, str, str]:
    """``NAME``, ``NAME@VERSION`` or a digest → (digest, name, version).

    ``NAME`` picks the highest submitted version (its newest submission); the
    worker then decides whether it may run.
    """
    if _DIGEST.match(ref):
        row = node.db.one("SELECT digest, name, version FROM bundles WHERE digest = ?", (ref,))
        if row is None:
            raise BadInputError(f"no submitted bundle {ref[:12]}; see opal algo list")
        return row["digest"], row["name"], row["version"]
    name, _, version = ref.partition("@")
    rows = node.db.query("SELECT digest, name, version, submitted FROM bundles WHERE name = ?", (name,))
    if version:
        rows = [r for r in rows if r["version"] == version]
    if not rows:
        raise BadInputError(f"no submitted algorithm {ref!r}; submit it with opal algo submit DIR")
    best = max(rows, key=lambda r: (version_key(r["version"]), r["submitted"]))
    return best["digest"], best["name"], best["version"]


def cache_key(*, digest: str, dataset_version: str, params: Any, epsilon: float) -> str:
    # averaging attack: identical runs must be served one answer, never fresh noise
    return digest_json(
        {"bundle": digest, "dataset": dataset_version, "params": params, "epsilon": repr(float(epsilon))}
    )


def request_run(
    node: Node,
    *,
    algorithm: str,
    dataset: str,
    params: Any,
    epsilon: float | None,
    signer: Signer,
) -> RunRecord:
    ds = catalog.get(node, dataset)
    # unlimited-probe attack: ε must be a whole micro-ε and at least the policy minimum
    # (the per-run cap is the worker's to refuse, on the record)
    eps = ds.policy.check_epsilon(ds.policy.default_epsilon if epsilon is None else epsilon, cap=False)
    digest, name, version = resolve_bundle(node, algorithm)
    try:
        canonical_json(params)
    except Exception:  # noqa: BLE001 - any failure means the value is not JSON
        raise BadInputError("--params must be a JSON value (e.g. '{\"start_day\": 0}')") from None
    run_id = uuid.uuid4().hex
    now = utcnow()
    key = cache_key(digest=digest, dataset_version=ds.version, params=params, epsilon=eps)
    body = {
        "run_id": run_id,
        "algorithm": f"{name}@{version}",
        "digest": digest,
        "dataset": dataset,
        "dataset_version": ds.version,
        "params": params,
        "epsilon": eps,
        "requester": signer.key_id,
    }
    body["request_signature"] = signer.sign(REQUEST_DOMAIN, canonical_json(body))
    with node.db.transaction() as tx:
        entry = node.ledger.append_in(tx, type="run_requested", body=body, signer=signer, subject=name)
        tx.execute(
            "INSERT INTO runs(run_id, algorithm, digest, dataset, params, epsilon, requester, state, cache_key, "
            "created, updated, request_index) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                run_id, f"{name}@{version}", digest, dataset, json.dumps(params), eps, signer.name, "requested",
                key, now, now, entry.index,
            ),
        )
    return get_run(node, run_id)
