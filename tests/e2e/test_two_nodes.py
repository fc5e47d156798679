"""Two OPAL homes on one PostgreSQL history: the statisticians' and reviewers'
node submits and requests; the operator's node holds the data and runs the
worker. Nothing is copied between the homes by hand: the bundle reaches the
worker node through the shared database, and it still re-hashes what it runs."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.conftest import ALGORITHMS, Opal


def test_a_bundle_submitted_on_one_node_runs_on_another(tmp_path: Path, broker_url: str, pg_url: str) -> None:
    from opal.data.synth import synthesize

    data = tmp_path / "operator-data" / "cdr.parquet"
    synthesize(data, subscribers=1500, days=3, seed=9)
    shared = {"OPAL_DB_URL": pg_url, "OPAL_QUEUE_PREFIX": "opal.two." + secrets.token_hex(4)}
    analysts = Opal(home=tmp_path / "analysts", broker_url=broker_url, extra_env=shared)
    operator = Opal(home=tmp_path / "operator", broker_url=broker_url, extra_env=shared)
    try:
        operator("keys", "new", "olga", "--role", "operator", check=True)
        for name, role in (("sam", "statistician"), ("rita", "reviewer"), ("ravi", "reviewer")):
            analysts("keys", "new", name, "--role", role, check=True)
        analysts.board()  # the board names every key of both nodes (one shared keyring table)
        operator("dataset", "register", "demo", str(data), "--key", "olga", check=True)
        analysts("algo", "submit", str(ALGORITHMS / "population_density"), "--key", "sam", check=True)
        analysts("algo", "approve", "population_density", "--key", "rita", check=True)
        analysts("algo", "approve", "population_density", "--key", "ravi", check=True)
        digest = analysts.json("algo", "list")[0]["digest"]
        assert not (operator.home / "registry" / digest).exists()

        operator.start_worker("demo", key="olga")
        proc = analysts("run", "population_density", "--dataset", "demo", "--key", "sam",
                        "--params", '{"start_day": 0, "end_day": 2}', "--epsilon", "0.5", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["state"] == "released"
        assert (operator.home / "registry" / digest / "algorithm.py").exists()   # materialised, then re-hashed

        # one history: both nodes see the same budget and verify the same ledger
        assert operator.json("budget", "show")[0]["spent"] == pytest.approx(0.5)
        roots = {json.loads(node("ledger", "verify", "--json", check=True).stdout)["root"] for node in (analysts, operator)}
        assert len(roots) == 1
        actors = {e["actor_role"] for e in analysts.json("ledger", "show")}
        assert actors == {"board", "operator", "statistician", "reviewer"}
    finally:
        operator.stop_workers()
