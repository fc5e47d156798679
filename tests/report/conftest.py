"""A scripted history with known numbers, through the real CLI, a real worker and a real Redis:
two released runs (ε 0.5 and 0.25), one through the Python client (ε 0.125), on a dataset whose total budget is 1; a run refused
for its budget (ε 0.5 > 0.125 left), a run refused on its parameters, the bundle revoked by the
board, a run refused for trust, a signed checkpoint and a witness's cosignature."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ALGORITHMS, REPO, Opal


@dataclass
class Scenario:
    opal: Opal
    runs: dict[str, str]  # label -> run id
    keys: dict[str, str]  # name -> key id
    client: dict[str, Any]  # what the Python client returned: run_id, table (records), receipt

_CLIENT = """
import json, sys
from opal.client import Client
client = Client(home=sys.argv[1])
result = client.run("population_density", dataset="cdr", params={"start_day": 1, "end_day": 2},
                    epsilon=0.125, key="sam")
print(json.dumps({"run_id": result.run_id, "table": result.table.to_dict(orient="records"),
                  "receipt": result.receipt, "budget": client.budget().to_dict(orient="records"),
                  "runs": client.runs()["run_id"].tolist()}))
"""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("board")
    opal = Opal(home=root / "home", broker_url=broker_url, extra_env={"XDG_CONFIG_HOME": str(root / "auditor")})
    try:
        for name, role in (("olga", "operator"), ("sam", "statistician"), ("rita", "reviewer"),
                           ("ravi", "reviewer"), ("wes", "witness")):
            opal("keys", "new", name, "--role", role, check=True)
        opal.board(board_key="bea")
        data = root / "cdr.parquet"
        opal("dataset", "synth", str(data), "--subscribers", "2000", "--days", "3", "--seed", "3", check=True)
        policy = root / "release_policy.toml"
        template = (REPO / "governance" / "release_policy.toml").read_text()
        policy.write_text(re.sub(r"(?m)^total_epsilon = [0-9.]+", "total_epsilon = 1.0", template))
        opal("dataset", "register", "cdr", str(data), "--key", "olga", "--policy", str(policy), check=True)
        opal("algo", "submit", str(ALGORITHMS / "population_density"), "--key", "sam", check=True)
        opal("algo", "approve", "population_density", "--key", "rita", "--comment", "one row per subscriber",
             check=True)
        opal("algo", "approve", "population_density", "--key", "ravi", check=True)
        opal.start_worker("cdr", key="olga")
        runs: dict[str, str] = {}

        def run(label: str, params: str, epsilon: str) -> None:
            proc = opal("run", "population_density", "--dataset", "cdr", "--params", params,
                        "--epsilon", epsilon, "--key", "sam", "--json")
            runs[label] = json.loads(proc.stdout)["run_id"]

        run("first", '{"start_day": 0, "end_day": 2}', "0.5")
        run("second", '{"start_day": 0, "end_day": 1}', "0.25")
        proc = subprocess.run([sys.executable, "-c", _CLIENT, str(opal.home)], env=opal.env, text=True,
                              capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        client = json.loads(proc.stdout)
        runs["client"] = client["run_id"]
        run("over_budget", '{"start_day": 1, "end_day": 2}', "0.5")  # not the cached twin of "first"
        run("bad_params", '{"start_day": "monday", "end_day": 1}', "0.5")
        opal("algo", "revoke", "population_density@1.0.0", "--reason", "double counts roamers", "--key", "bea",
             check=True)
        run("revoked", '{"start_day": 0, "end_day": 2}', "0.5")
        opal.stop_workers()
        opal("ledger", "checkpoint", "--key", "olga", check=True)
        opal("ledger", "cosign", "--key", "wes", check=True)
        keys = {k["name"]: k["key_id"] for k in opal.json("keys", "list")}  # type: ignore[union-attr]
        yield Scenario(opal=opal, runs=runs, keys=keys, client=client)
    finally:
        opal.stop_workers()
