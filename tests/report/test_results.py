"""Released results that explain themselves, and the Python client on the same calls."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from tests.report.conftest import Scenario

COLUMNS = ["region", "day", "count", "suppressed", "noise_scale", "ci_low", "ci_high"]


def _json_table(scenario: Scenario, run: str) -> list[dict[str, object]]:
    proc = scenario.opal("runs", "result", scenario.runs[run], "--format", "json", check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_client_returns_the_table_of_runs_result_format_json(scenario: Scenario) -> None:
    rows = _json_table(scenario, "client")
    pd.testing.assert_frame_equal(pd.DataFrame(scenario.client["table"]), pd.DataFrame(rows))
    assert pd.DataFrame(rows).suppressed.sum() < len(rows)
    assert list(rows[0]) == COLUMNS
    receipt = scenario.client["receipt"]  # the worker signs a checkpoint after a release
    assert receipt is None or scenario.runs["client"] in json.dumps(receipt)


def test_client_budget_and_runs_are_those_of_the_cli(scenario: Scenario) -> None:
    # the client's budget was read right after its own run: 0.5 + 0.25 + 0.125 spent
    assert [(b["dataset"], b["spent"]) for b in scenario.client["budget"]] == [("cdr", 0.875)]
    assert scenario.client["runs"][:3] == [scenario.runs["client"], scenario.runs["second"], scenario.runs["first"]]


def test_every_released_cell_has_noise_scale_and_an_interval_around_its_value(scenario: Scenario) -> None:
    rows = _json_table(scenario, "first")
    assert len(rows) == 12 * 3  # one row per cell of the public domains: 12 regions x 3 days
    for row in rows:
        assert row["noise_scale"] == 30 / 0.5  # max_groups_per_unit / ε
        if not row["suppressed"]:
            assert row["ci_low"] <= row["count"] <= row["ci_high"]  # type: ignore[operator]


def test_csv_and_parquet_hold_the_same_table_as_json(scenario: Scenario, tmp_path: Path) -> None:
    rows = _json_table(scenario, "first")
    expected = pd.DataFrame(rows)
    csv = scenario.opal("runs", "result", scenario.runs["first"], "--format", "csv", check=True).stdout
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(csv)), expected, check_dtype=False)
    out = tmp_path / "t.parquet"
    scenario.opal("runs", "result", scenario.runs["first"], "--format", "parquet", "--out", str(out), check=True)
    pd.testing.assert_frame_equal(pq.read_table(out).to_pandas(), expected, check_dtype=False)


def test_parquet_to_stdout_is_refused_with_the_fix(scenario: Scenario) -> None:
    proc = scenario.opal("runs", "result", scenario.runs["first"], "--format", "parquet")
    assert proc.returncode == 2 and "--out FILE" in proc.stderr


def test_runs_show_prints_the_table_with_intervals(scenario: Scenario) -> None:
    text = scenario.opal("runs", "show", scenario.runs["second"], check=True).stdout
    assert "released" in text and "noise_scale" in text and "ci_low" in text and "ci_high" in text
    rows = _json_table(scenario, "second")
    assert sum(1 for line in text.splitlines() if f"{rows[0]['noise_scale']:,.2f}" in line) == len(rows)


def test_html_result_page_has_plot_table_and_verified_receipt(scenario: Scenario, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    scenario.opal("runs", "result", scenario.runs["first"], "--html", "--out", str(out), check=True)
    page = out.read_text()
    assert 'data-figure="released values with 95% intervals"' in page
    assert 'id="receipt" class="ok"' in page and "receipt verified" in page
    assert page.count("<tr>") == 1 + 36
