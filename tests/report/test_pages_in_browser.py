"""The governance report and the result page, opened in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.report.browser import render
from tests.report.conftest import Scenario

ARTIFACTS = REPO / "test-artifacts"


def test_the_network_check_sees_a_page_that_loads_something(tmp_path: Path) -> None:
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/pixel.png"></body></html>')
    assert render(page, tmp_path / "chromium").page_requests == ["http://127.0.0.1:9/pixel.png"]


def test_the_csp_blocks_and_reports_a_load_the_page_might_try(tmp_path: Path) -> None:
    from opal.report.html import page as html_page

    page = tmp_path / "blocked.html"
    page.write_text(html_page("t", '<img src="http://127.0.0.1:9/pixel.png">'))
    rendered = render(page, tmp_path / "chromium")
    assert rendered.page_requests == []
    assert any("Content Security Policy" in line for line in rendered.console)


@pytest.fixture(scope="module")
def report_page(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("page") / "report.html"
    scenario.opal("report", "--out", str(out), check=True)
    return out


def test_report_renders_with_its_figures_no_console_error_and_no_request(report_page: Path, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "governance-report.png"
    rendered = render(report_page, tmp_path / "chromium", screenshot=shot)
    assert rendered.console == [] and rendered.page_requests == []
    dom = rendered.dom
    for label in ("privacy budget over time", "runs per algorithm and outcome over time",
                  "runs per algorithm by outcome", "refusals by cause", "ledger size over time"):
        assert re.search(rf'<svg[^>]*data-figure="{label}"', dom), label
    # the figures match the ledger: runs per outcome, ε spent per dataset
    assert re.search(r'<table id="outcomes">.*<td>refused</td><td class="num">3</td>.*'
                     r'<td>released</td><td class="num">3</td>', dom, re.S)
    assert '<td>cdr</td><td class="num">0.875</td>' in dom
    assert "sam +0.5" in dom and "sam +0.25" in dom and "sam +0.125" in dom  # who spent it, on the plot
    assert not re.search(r'(?:src|href)="(?:https?:)?//', dom)
    assert shot.stat().st_size > 10_000


def test_result_page_renders_with_plot_and_verified_receipt(scenario: Scenario, tmp_path: Path) -> None:
    out = tmp_path / "result.html"
    scenario.opal("runs", "result", scenario.runs["first"], "--html", "--out", str(out), check=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "result-page.png"
    rendered = render(out, tmp_path / "chromium", screenshot=shot)
    assert rendered.console == [] and rendered.page_requests == []
    assert 'data-figure="released values with 95% intervals"' in rendered.dom
    assert 'class="ok"' in rendered.dom and "receipt verified" in rendered.dom
    assert shutil.which("chromium") is not None or shot.exists()
