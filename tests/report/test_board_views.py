"""`opal ledger show` and `opal budget history` on the scripted history, from signed entries."""

from __future__ import annotations

import json

from tests.report.conftest import Scenario


def test_ledger_show_names_algorithm_dataset_and_requester_of_run_entries(scenario: Scenario) -> None:
    text = scenario.opal("ledger", "show", "--type", "run_requested", check=True).stdout
    lines = [line for line in text.splitlines() if "run_requested" in line]
    assert len(lines) == 6
    for line in lines:
        assert "population_density@1.0.0" in line and " cdr " in line and "sam" in line
    first = scenario.runs["first"][:12]
    assert any(first in line and "ε=0.5" in line for line in lines)


def test_ledger_show_limit_shows_the_newest_entries(scenario: Scenario) -> None:
    everything = scenario.opal.json("ledger", "show")
    newest = scenario.opal.json("ledger", "show", "--limit", "3")
    assert [e["index"] for e in newest] == [e["index"] for e in everything[-3:]]  # type: ignore[index]
    last = everything[-1]  # type: ignore[index]
    assert last["type"] == "run_finished" and last["body"]["run_id"] == scenario.runs["revoked"]


def test_ledger_show_finished_run_says_outcome_and_epsilon(scenario: Scenario) -> None:
    text = scenario.opal("ledger", "show", "--type", "run_finished", check=True).stdout
    second = next(line for line in text.splitlines() if scenario.runs["second"][:12] in line)
    assert "released ε spent 0.25" in second and "population_density@1.0.0" in second and "sam" in second
    refused = next(line for line in text.splitlines() if scenario.runs["bad_params"][:12] in line)
    assert "refused ε spent 0" in refused


def test_budget_history_lists_every_charge_with_running_total(scenario: Scenario) -> None:
    charges = scenario.opal.json("budget", "history", "--dataset", "cdr")
    assert [(c["run_id"], c["epsilon"], c["running_total"], c["requester_name"], c["algorithm"], c["outcome"])
            for c in charges] == [  # type: ignore[union-attr]
        (scenario.runs["first"], 0.5, 0.5, "sam", "population_density@1.0.0", "released"),
        (scenario.runs["second"], 0.25, 0.75, "sam", "population_density@1.0.0", "released"),
        (scenario.runs["client"], 0.125, 0.875, "sam", "population_density@1.0.0", "released"),
    ]
    assert all(c["requester"] == scenario.keys["sam"] for c in charges)  # type: ignore[union-attr]
    shown = json.loads(scenario.opal("budget", "show", "--dataset", "cdr", "--json", check=True).stdout)
    assert shown[0]["spent"] == charges[-1]["running_total"]  # type: ignore[index]


def test_budget_history_table_is_as_wide_as_its_rows(scenario: Scenario) -> None:
    text = scenario.opal("budget", "history", check=True).stdout
    row = next(line for line in text.splitlines() if scenario.runs["second"][:12] in line)
    assert "population_density@1.0.0" in row and "0.25" in row and "0.75" in row and "sam" in row
    assert "  #  " in text.splitlines()[1] or "#" in text.splitlines()[1]


def test_budget_history_of_unknown_dataset_is_bad_input(scenario: Scenario) -> None:
    proc = scenario.opal("budget", "history", "--dataset", "nope")
    assert proc.returncode == 2 and "no run on dataset 'nope'" in proc.stderr


def test_budget_history_ignores_edited_database_copies(scenario: Scenario, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The runs and budget_events tables are copies: editing them changes no board figure."""
    import shutil
    import sqlite3

    before = scenario.opal.json("budget", "history")
    copy = tmp_path / "home"
    shutil.copytree(scenario.opal.home, copy, ignore=shutil.ignore_patterns("*.log"))
    with sqlite3.connect(str(copy / "opal.db")) as conn:
        conn.execute("UPDATE runs SET requester = 'ravi', epsilon = 0.001, dataset = 'elsewhere'")
        conn.execute("UPDATE budget_events SET epsilon = 1")
    after = json.loads(scenario.opal("--home", str(copy), "budget", "history", "--json", check=True).stdout)
    assert after == before
