"""Total runs through real workers (issue #14): once a run has touched the data,
what the requester and the ledger see depends on the data only through noise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opal.release.domains import sidecar_for
from tests.conftest import Opal

# Raises iff the secret bit (the parity of one known call's duration) is set.
BIT_BUNDLE = {
    "opal.toml": '''name = "bit_probe"
version = "1.0.0"
description = "An attack: fails when one subscriber's secret bit is set"
entrypoint = "contributions"
dataset = "cdr"

[privacy]
unit = "msisdn"
aggregation = "count"
max_groups_per_unit = 30

[privacy.groups]
region = "dataset"
day = "dataset"

[parameters]
type = "object"
additionalProperties = false
''',
    "algorithm.py": '''
def contributions(data, params):
    cdr = data.cdr
    target = cdr[cdr["timestamp"] == cdr["timestamp"].max()]
    if int(target["duration_s"].iloc[0]) % 2 == 1:
        raise ValueError("bit set")
    return cdr[["msisdn", "region", "day"]].drop_duplicates()
''',
}

# Puts raw rows into a column name: a refusal message would carry them.
LEAK_BUNDLE = {
    "opal.toml": BIT_BUNDLE["opal.toml"].replace("bit_probe", "name_leak"),
    "algorithm.py": '''
def contributions(data, params):
    cdr = data.cdr
    out = cdr[["msisdn", "region", "day"]].drop_duplicates()
    out["rows_" + "_".join(str(v) for v in cdr["duration_s"].head(6).tolist())] = 1
    return out
''',
}


def _bundle(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two datasets that differ only in the parity of one call's duration."""
    from opal.data.synth import synthesize

    base = tmp_path_factory.mktemp("twins")
    raw = base / "raw.parquet"
    synthesize(raw, subscribers=800, days=2, seed=21)
    df = pd.read_parquet(raw)
    last = df["timestamp"].idxmax()
    schema = pq.read_schema(raw)
    out = []
    for bit in (0, 1):
        copy = df.copy()
        copy.loc[last, "duration_s"] = 2 * (int(copy.loc[last, "duration_s"]) // 2) + bit
        path = base / f"bit{bit}" / "cdr.parquet"
        path.parent.mkdir()
        pq.write_table(pa.Table.from_pandas(copy, schema=schema, preserve_index=False), path)
        shutil.copyfile(sidecar_for(raw), sidecar_for(path))
        out.append(path)
    return out[0], out[1]


def _setup(opal: Opal, datasets: dict[str, Path], bundles: list[Path]) -> None:
    for name, role in (("olga", "operator"), ("sam", "statistician"), ("rita", "reviewer"), ("ravi", "reviewer")):
        opal("keys", "new", name, "--role", role, check=True)
    opal.board()  # worker runs need a board-signed trust policy (docs/governance.md)
    for name, path in datasets.items():
        opal("dataset", "register", name, str(path), "--key", "olga", check=True)
    for folder in bundles:
        opal("algo", "submit", str(folder), "--key", "sam", check=True)
        name = folder.name
        opal("algo", "approve", name, "--key", "rita", check=True)
        opal("algo", "approve", name, "--key", "ravi", check=True)


def _run(opal: Opal, algorithm: str, dataset: str) -> tuple[int, dict, dict]:
    proc = opal("run", algorithm, "--dataset", dataset, "--params", "{}", "--epsilon", "0.1", "--key", "sam", "--json")
    run = json.loads(proc.stdout) if proc.stdout.strip() else {}
    result = json.loads(opal("runs", "result", run["run_id"], "--json", check=True).stdout) if run else {}
    return proc.returncode, run, result


def test_a_bundle_that_raises_iff_a_secret_bit_is_set_gets_the_same_outcome(
    opal: Opal, twins: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path / "bit_probe", BIT_BUNDLE)
    _setup(opal, {"bit0": twins[0], "bit1": twins[1]}, [bundle])
    opal.start_worker("bit0", key="olga")
    opal.start_worker("bit1", key="olga")
    seen = {}
    for dataset in ("bit0", "bit1"):
        code, run, result = _run(opal, "bit_probe", dataset)
        table = result["release"]["table"]
        cells = [row[:2] for row in table["rows"]]
        seen[dataset] = (code, run["state"], run.get("error"), table["columns"], cells)
    # what the requester sees: exit code, state, the released table's rows and labels
    assert seen["bit0"] == seen["bit1"]
    assert seen["bit0"][0] == 0 and seen["bit0"][1] == "released"
    # the ledger has no outcome text, only a digest of the operator's record
    finished = [e["body"] for e in opal.json("ledger", "show") if e["type"] == "run_finished"]
    assert [f["outcome"] for f in finished] == ["released", "released"]
    assert all("reason" not in f and "error_type" not in f for f in finished)
    assert all(len(f["operator_outcome_digest"]) == 64 for f in finished)
    assert finished[0]["operator_outcome_digest"] != finished[1]["operator_outcome_digest"]
    # both runs spent their ε, each from its own dataset's budget
    assert [b["spent"] for b in opal.json("budget", "show")] == [0.1, 0.1]
    # the true outcome is the operator's
    runs = {r["dataset"]: r["run_id"] for r in opal.json("runs", "list")}
    assert opal.json("runs", "decisions", runs["bit0"])["run_outcome"] == {"outcome": "ok"}
    failed = opal.json("runs", "decisions", runs["bit1"])["run_outcome"]
    assert failed["outcome"] == "no contributions" and failed["error_type"] == "AlgorithmFailed"
    text = opal("runs", "decisions", runs["bit1"], check=True).stdout
    assert "AlgorithmFailed" in text


def test_a_column_named_after_raw_rows_reaches_no_message_or_ledger_entry(
    opal: Opal, twins: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path / "name_leak", LEAK_BUNDLE)
    _setup(opal, {"demo": twins[0]}, [bundle])
    opal.start_worker("demo", key="olga")
    code, run, result = _run(opal, "name_leak", "demo")
    assert code == 0 and run["state"] == "released"
    rows = "_".join(str(v) for v in pd.read_parquet(twins[0])["duration_s"].head(6).tolist())
    ledger = opal("ledger", "show", "--json", check=True).stdout
    operator = opal("runs", "decisions", run["run_id"], "--json", check=True).stdout
    for text in (json.dumps(run), json.dumps(result), ledger, operator):
        assert rows not in text
    # the operator learns the table's shape was wrong, from the declared names only
    message = json.loads(operator)["run_outcome"]["message"]
    assert "return exactly the declared columns" in message and "msisdn, region, day" in message


def test_a_data_free_parameter_check_refuses_before_the_run_and_spends_nothing(
    opal: Opal, twins: tuple[Path, Path]
) -> None:
    from tests.conftest import ALGORITHMS

    _setup(opal, {"demo": twins[0]}, [ALGORITHMS / "population_density"])
    opal.start_worker("demo", key="olga")
    proc = opal("run", "population_density", "--dataset", "demo", "--params", '{"start_day": 1, "end_day": 0}',
                "--epsilon", "0.1", "--key", "sam")
    assert proc.returncode == 2, proc.stderr
    assert "the bundle's check_params refused the parameters" in proc.stderr
    assert opal.json("budget", "show")[0]["spent"] == 0
    last = opal.json("ledger", "show", "--type", "run_finished")[-1]["body"]
    assert last["outcome"] == "refused" and last["epsilon_spent"] == 0


def test_a_fault_in_the_gate_after_the_data_was_touched_still_releases_over_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_url: str) -> None:
    # Whether the gate fails (or the task's soft time limit fires inside it) can depend
    # on what the algorithm returned: the requester must see an ordinary release.
    import opal.release
    from benchmarks.scenario import build
    from opal.runs import request_run
    from opal.runs.records import get_run
    from opal.worker import state
    from opal.worker.pipeline import execute_run

    monkeypatch.setenv("OPAL_BROKER_URL", broker_url)
    sc = build(tmp_path / "home", subscribers=200, days=1)
    monkeypatch.setenv("OPAL_HOME", str(sc.node.home.root))
    real = opal.release.release

    def flaky(contributions: object, **kwargs: object) -> object:
        if contributions is not None:
            raise MemoryError("a table too large for the gate")
        return real(contributions, **kwargs)

    monkeypatch.setattr(opal.release, "release", flaky)
    record = request_run(sc.node, algorithm="spin_count", dataset=sc.dataset, params={"tag": 1}, epsilon=0.1,
                         signer=sc.node.keyring.signer("sam"))
    execute_run(sc.node, record.run_id, signer=sc.node.keyring.signer("olga"), runtime_for=state.runtime_for)
    run = get_run(sc.node, record.run_id)
    assert run.state == "released" and run.error is None
    decisions = json.loads(sc.node.db.one("SELECT record FROM run_decisions WHERE run_id = ?",
                                          (record.run_id,))["record"])
    assert decisions["run_outcome"] == {"outcome": "no contributions", "error_type": "MemoryError",
                                        "where": "release gate"}
    state.close_runtimes()
