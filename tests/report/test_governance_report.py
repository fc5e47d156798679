"""`opal report` from the node's database and from a verified export, on the scripted history."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.report.conftest import Scenario

FIGURES = {
    "outcomes": {"refused": 3, "released": 3},
    "refusals_by_cause": {"budget": 1, "parameters": 1, "trust": 1},
    "epsilon_spent": {"cdr": 0.875},
    "runs_by_algorithm": {"population_density@1.0.0": {"refused": 3, "released": 3}},
}
TABLES = ("outcomes", "epsilon-spent", "charges", "refusals", "runs", "checkpoints", "policy", "policy-history")


def _table(page: str, ident: str) -> list[list[str]]:
    match = re.search(rf'<table id="{ident}">(.*?)</table>', page, re.S)
    assert match, f"no table {ident}"
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", match.group(1))]


def _policy_file(scenario: Scenario) -> Path:
    return scenario.opal.home / "governance" / "trust_policy.json"


@pytest.fixture(scope="module")
def node_report(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], str]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    summary = json.loads(scenario.opal("report", "--out", str(out), "--json", check=True).stdout)
    return summary, out.read_text()


@pytest.fixture(scope="module")
def export_file(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "ledger.jsonl"
    scenario.opal("ledger", "export", "--out", str(out), check=True)
    return out


def test_report_from_node_has_the_known_figures(node_report: tuple[dict[str, object], str]) -> None:
    summary, page = node_report
    assert {k: summary[k] for k in FIGURES} == FIGURES
    assert _table(page, "outcomes")[1:] == [["refused", "3"], ["released", "3"]]
    assert _table(page, "epsilon-spent")[1:] == [["cdr", "0.875", "1", "0.125"]]
    assert [row[3] for row in _table(page, "charges")[1:]] == ["sam", "sam", "sam"]
    assert [row[7:] for row in _table(page, "charges")[1:]] == [["0.5", "0.5"], ["0.25", "0.75"], ["0.125", "0.875"]]
    assert _table(page, "refusals")[1:] == [["budget", "1"], ["parameters", "1"], ["trust", "1"]]


def test_report_names_reviews_revocation_checkpoint_and_witness(
    scenario: Scenario, node_report: tuple[dict[str, object], str]
) -> None:
    _, page = node_report
    assert "population_density@1.0.0" in page and "revoked by bea" in page and "double counts roamers" in page
    assert "one row per subscriber" in page  # rita's comment, from her signed statement
    reviews = re.findall(r"<td>(rita|ravi)</td><td>approve</td>", page)
    assert sorted(reviews) == ["ravi", "rita"]
    checkpoints = _table(page, "checkpoints")[1:]
    assert checkpoints[-1][2] == "olga" and checkpoints[-1][4].startswith("wes ")
    size = int(checkpoints[-1][0])
    assert f"covers the signed checkpoint of size {size}" in page
    assert "diff summary: first version" in page
    assert 'id="expiring"' not in page  # the only version is revoked: no approval of it is pending expiry
    assert [row[0] for row in _table(page, "policy")[1:]] == ["board", "operator", "reviewer", "statistician",
                                                              "witness"]


def test_report_from_export_gives_the_same_figures(
    scenario: Scenario, node_report: tuple[dict[str, object], str], export_file: Path, tmp_path: Path
) -> None:
    summary, page = node_report
    out = tmp_path / "offline.html"
    offline = json.loads(scenario.opal("report", "--file", str(export_file), "--policy", str(_policy_file(scenario)),
                                       "--out", str(out), "--json", check=True).stdout)
    # an export carries its latest checkpoint only; every other figure is the same
    skip = ("out", "checkpoints")
    assert {k: v for k, v in offline.items() if k not in skip} == {k: v for k, v in summary.items() if k not in skip}
    assert offline["checkpoints"] == 1
    other = out.read_text()
    for ident in TABLES:
        if ident == "checkpoints":
            assert _table(other, ident)[1:] == _table(page, ident)[-1:]
        else:
            assert _table(other, ident) == _table(page, ident), ident
    assert "verified offline" in other


def test_report_from_tampered_export_is_refused_before_writing(
    scenario: Scenario, export_file: Path, tmp_path: Path
) -> None:
    lines = export_file.read_text().splitlines()
    # the board's nightmare: the operator shrinks a charge in the copy it hands over
    victim = next(i for i, line in enumerate(lines) if '\\"epsilon_spent\\":0.5' in line)
    lines[victim] = lines[victim].replace('\\"epsilon_spent\\":0.5', '\\"epsilon_spent\\":0.05')
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.html"
    proc = scenario.opal("report", "--file", str(tampered), "--policy", str(_policy_file(scenario)),
                         "--out", str(out))
    assert proc.returncode == 7, proc.stderr
    assert f"entry {json.loads(lines[victim])['index']}" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_report_refuses_a_node_ledger_rewritten_under_its_checkpoint(scenario: Scenario, tmp_path: Path) -> None:
    import shutil
    import sqlite3

    from opal.ledger.merkle import leaf_hash

    copy = tmp_path / "home"
    shutil.copytree(scenario.opal.home, copy, ignore=shutil.ignore_patterns("*.log"))
    conn = sqlite3.connect(str(copy / "opal.db"), isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_update")
    (idx, raw) = conn.execute("SELECT idx, entry FROM ledger WHERE type = 'run_finished' ORDER BY idx").fetchone()
    forged = bytes(raw).replace(b'"epsilon_spent":0.5', b'"epsilon_spent":0.05')
    assert forged != bytes(raw)
    # a careful forger recomputes the leaf-hash column too: the signed checkpoint's root still differs
    conn.execute("UPDATE ledger SET entry = ?, leaf_hash = ? WHERE idx = ?", (forged, leaf_hash(forged), idx))
    conn.close()
    out = tmp_path / "r.html"
    proc = scenario.opal("--home", str(copy), "report", "--out", str(out))
    assert proc.returncode == 7 and "checkpoint" in proc.stderr
    assert not out.exists()


def test_report_options_that_do_not_fit_are_bad_input(scenario: Scenario, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    proc = scenario.opal("report", "--out", str(out), "--policy", str(_policy_file(scenario)))
    assert proc.returncode == 2 and "--policy goes with --file EXPORT" in proc.stderr
    proc = scenario.opal("report", "--out", str(out), "--file", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2 and "no export file at" in proc.stderr
    assert not out.exists()
