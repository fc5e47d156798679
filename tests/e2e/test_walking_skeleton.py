"""The whole story through the real CLI, a real worker process and a real Redis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opal.release.domains import load_domains, sidecar_for
from tests.conftest import ALGORITHMS, Opal

ISLET = "Islet"          # a region we plant with 5 subscribers: its cells must never be released
ISLET_UNITS = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded synthetic world in which 5 subscribers live in a tiny region."""
    from opal.data.synth import synthesize

    folder = tmp_path_factory.mktemp("world")
    raw = folder / "raw.parquet"
    synthesize(raw, subscribers=10000, days=4, seed=11)
    df = pq.read_table(raw).to_pandas()
    planted = df["msisdn"].drop_duplicates().sort_values().iloc[:ISLET_UNITS]
    df["region"] = df["region"].astype(object)
    df.loc[df["msisdn"].isin(planted), "region"] = ISLET
    out = folder / "cdr.parquet"
    pq.write_table(pa.Table.from_pandas(df, schema=pq.read_schema(raw), preserve_index=False), out)
    shutil.copyfile(sidecar_for(raw), sidecar_for(out))  # the world's public domains: no islet
    return out


def _setup(opal: Opal, world: Path) -> None:
    opal("keys", "new", "olga", "--role", "operator", check=True)
    opal("keys", "new", "sam", "--role", "statistician", check=True)
    opal("keys", "new", "rita", "--role", "reviewer", check=True)
    opal("keys", "new", "ravi", "--role", "reviewer", check=True)
    opal.board()
    opal("dataset", "register", "demo", str(world), "--key", "olga", check=True)


def test_released_counts_match_ground_truth_and_ledger_tells_the_story(opal: Opal, world: Path) -> None:
    _setup(opal, world)
    opal("algo", "submit", str(ALGORITHMS / "population_density"), "--key", "sam", check=True)
    opal("algo", "approve", "population_density", "--key", "rita", check=True)
    opal("algo", "approve", "population_density", "--key", "ravi", check=True)
    opal.start_worker("demo", key="olga")

    proc = opal("run", "population_density", "--dataset", "demo", "--params", '{"start_day": 0, "end_day": 3}',
                "--epsilon", "1", "--key", "sam", "--json")
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["state"] == "released"
    doc = json.loads(opal("runs", "result", run["run_id"], "--json", check=True).stdout)
    result = doc["release"]
    table = pd.DataFrame(result["table"]["rows"], columns=result["table"]["columns"])
    # one row per cell of the public domains (12 regions x 4 days), whatever the data
    domains = load_domains(sidecar_for(world))
    assert [tuple(r) for r in table[["region", "day"]].values.tolist()] == [
        (region, day) for region in domains["region"] for day in domains["day"]
    ]
    assert ISLET not in set(table.region), "a label outside the public domain left the gate"
    assert "diagnostics" not in result and "run_outcome" not in result
    # the runs table is the outcome's one record: no copy of it waits in the broker's result store
    from opal.worker.recovery import broker_redis

    assert broker_redis(opal.broker_url).exists(f"celery-task-meta-{run['run_id']}") == 0
    released = table[~table.suppressed]

    df = pd.read_parquet(world)
    truth = df[df.day.between(0, 3)].groupby(["region", "day"]).msisdn.nunique()
    scale = 30 / 1.0                       # max_groups_per_unit / ε: the declared sensitivity
    bound = 25 * scale                     # P(|discrete Laplace| > 25 b) < 1e-10 per cell
    assert len(released) > 0
    for row in released.itertuples():
        assert abs(row.count - truth[(row.region, row.day)]) <= bound
        assert row.count >= 15 and row.ci_low <= row.count <= row.ci_high
        assert row.noise_scale == pytest.approx(scale)
    # cells far above min_units_per_cell are all released, and the noise is of the declared scale
    minimum = result["mechanism"]["min_units_per_cell"]
    assert minimum == 15 and "threshold" not in result["mechanism"]
    big = truth[truth > minimum + bound]
    assert len(big) > 0
    got = released.set_index(["region", "day"])["count"]
    assert set(big.index) <= set(got.index)
    errors = (got.reindex(big.index) - big).abs()
    assert errors.mean() < 5 * scale

    budget = opal.json("budget", "show", "--dataset", "demo")
    assert budget[0]["spent"] == pytest.approx(1.0)
    assert budget[0]["left"] == pytest.approx(9.0)

    verify = opal("ledger", "verify", "--json")
    assert verify.returncode == 0, verify.stderr
    entries = opal.json("ledger", "show")
    types = [e["type"] for e in entries]
    expected = ["trust_policy", "dataset_registered", "policy_changed", "bundle_submitted", "bundle_approved",
                "bundle_approved", "run_requested", "run_started", "run_finished"]
    assert types == expected
    finished = entries[-1]["body"]
    assert finished["outcome"] == "released"
    assert finished["result_digest"] == doc["result_digest"]
    assert len(finished["decisions_digest"]) == 64 and len(finished["operator_outcome_digest"]) == 64

    # the operator's view: the true outcome and what the gate dropped (the planted islet)
    operator = opal.json("runs", "decisions", run["run_id"])
    assert operator["cells_released"] == len(released)
    assert operator["run_outcome"] == {"outcome": "ok"}
    assert operator["diagnostics"]["rows_dropped"]["group label missing or outside the public domain"] > 0

    # whoever receives the result can check, offline, that an approved run released it
    out = opal.home.parent / "result.json"
    opal("runs", "result", run["run_id"], "--out", str(out), check=True)
    checked = opal("runs", "verify", str(out), "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["ledger_index"] == entries[-1]["index"]
    forged = json.loads(out.read_text())
    forged["release"]["table"]["rows"][0][2] += 1  # Amara, day 0: a large released cell
    out.write_text(json.dumps(forged))
    tampered = opal("runs", "verify", str(out))
    assert tampered.returncode == 6 and "the table was changed" in tampered.stderr
    assert finished["epsilon_spent"] == 1.0


def _refused(opal: Opal, *args: str) -> tuple[int, str, dict]:
    proc = opal("run", *args, "--key", "sam")
    runs = opal.json("runs", "list")
    last = opal.json("ledger", "show", "--type", "run_finished")[-1]["body"]
    return proc.returncode, proc.stderr, {"runs": runs, "last": last}


def test_unapproved_changed_and_bad_params_are_refused_with_reasons(opal: Opal, world: Path, tmp_path: Path) -> None:
    _setup(opal, world)
    bundle = tmp_path / "pd"
    shutil.copytree(ALGORITHMS / "population_density", bundle)
    opal("algo", "submit", str(bundle), "--key", "sam", check=True)
    opal.start_worker("demo", key="olga")
    params = '{"start_day": 0, "end_day": 1}'

    # 1. unapproved: exit 6
    code, err, info = _refused(opal, "population_density", "--dataset", "demo", "--params", params)
    assert code == 6, err
    assert "0 valid approval(s), the trust policy needs 2" in err
    errors = [line for line in err.splitlines() if line.startswith("opal: error:")]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1] and "Traceback" not in err
    assert info["last"]["outcome"] == "refused" and info["last"]["exit_code"] == 6

    # 2. approved, then the stored bytes change: exit 6
    opal("algo", "approve", "population_density", "--key", "rita", check=True)
    opal("algo", "approve", "population_density", "--key", "ravi", check=True)
    digest = opal.json("algo", "list")[0]["digest"]
    stored = opal.home / "registry" / digest / "algorithm.py"
    stored.chmod(0o644)
    stored.write_text(stored.read_text() + "\n# changed after approval\n")
    code, err, info = _refused(opal, "population_density", "--dataset", "demo", "--params", params)
    assert code == 6, err
    assert "changed after submission" in err
    assert info["last"]["outcome"] == "refused"

    # 3. a clean bundle with bad params: exit 2, nothing released, no budget spent
    stored.write_text(stored.read_text().replace("\n# changed after approval\n", ""))
    code, err, info = _refused(opal, "population_density", "--dataset", "demo", "--params", '{"start_day": "x", "end_day": 1}')
    assert code == 2, err
    assert "params do not match the schema" in err
    assert info["last"]["outcome"] == "refused" and info["last"]["exit_code"] == 2
    assert all(r["state"] != "released" for r in info["runs"])
    assert opal.json("budget", "show")[0]["spent"] == 0
    assert opal("ledger", "verify").returncode == 0
