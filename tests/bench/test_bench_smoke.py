"""The benchmark harness runs end to end at a tiny size and writes a well-formed
report. No timing is asserted: the figures are for reading, not for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

NAMES = ["population_density", "home_location", "od_matrix", "displacement", "call_volume", "unique_visitors"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPAL_", "BENCH_"))}
    env["OPAL_BROKER_URL"] = broker_url
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--data-dir", str(out / "data"),
         "--output", str(out / "BENCHMARKS.md"), "--json", str(out / "results.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    return proc, out


def test_quick_run_exits_zero_and_prints_progress_and_the_report(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FAILED" not in proc.stdout, proc.stdout[-3000:]
    assert "(a) pandas" in proc.stdout and "(d) end to end" in proc.stdout
    assert "# OPAL benchmarks" in proc.stdout


def test_report_has_every_section_and_every_algorithm(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    text = (out / "BENCHMARKS.md").read_text()
    for heading in ("## Datasets", "## Reference algorithms: OPAL vs pandas vs DuckDB", "## Worker memory",
                    "## Release gate alone vs DuckDB", "## Utility on small data (public domains)", "## Ledger", "## Small runs: throughput and added latency",
                    "## Where OPAL is slower and why", "## The DuckDB SQL used for (e)"):
        assert heading in text
    for name in NAMES:
        assert f"| {name} |" in text
    assert "failed" not in text.lower()
    assert "from a bash loop" in text and "`python -c pass`" in text
    assert "CPUs" in text and "Python" in text
    assert text.count("<!-- HAND-WRITTEN") == 1 and text.count("<!-- END HAND-WRITTEN -->") == 1


def test_json_holds_every_sample_and_duckdb_agrees_with_pandas(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    (label,) = results["algorithms"]
    rows = {r["name"]: r for r in results["algorithms"][label]}
    assert sorted(rows) == sorted(NAMES)
    for name, row in rows.items():
        assert "errors" not in row, (name, row["errors"])
        for column in ("a", "b", "c", "d", "e"):
            timing = row[column]
            assert timing["n"] == len(timing["samples"]) >= 1
            assert timing["min"] <= timing["median"] <= timing["max"]
        assert row["duckdb_vs_pandas"] == "same", name
    assert results["workers"][label]["memory"]["by_role_peak_bytes"]["sandbox zygote (resident data)"] > 0
    assert results["gate"]["rows"] > 0 and results["gate"]["gate"]["n"] >= 1
    assert results["utility"]["cells"] == 84 and results["utility"]["interval_coverage"] is not None
    assert [a["processes"] for a in results["ledger"]["appends"]] == [1, 4]
    assert results["ledger"]["verify"]["entries"] == results["config"]["ledger_entries"]
    small = results["small"]
    assert small["concurrency_1"]["released"] == small["concurrency_1"]["runs"]
    assert small["cached_served"] == small["cached_repeat"]["n"] and not small["fresh_cached"]
    # issue #17's shell loop: every `opal run --no-wait` process printed a run id that was released
    assert small["shell_loop"]["runs"] == 2 * small["runs"] == small["shell_loop"]["released"]
    assert results["ledger"]["python_startup"]["n"] == 5


def test_the_hand_written_block_survives_a_rewrite(tmp_path: Path) -> None:
    from benchmarks.report import HAND_BEGIN, HAND_END, render

    results = {
        "format": "opal-bench/1", "started": "2026-01-01T00:00:00+00:00", "seconds": 1.0,
        "config": {"sizes": [20_000], "quick": True, "seed": 7, "reps": {"20k": 1}, "e2e_reps": {"20k": 1},
                   "sections": ["algorithms"]},
        "machine": {"nproc": 2, "memory_bytes": 2**30, "loadavg_start": [0, 0, 0]},
        "versions": {"python": "3"}, "datasets": [], "algorithms": {}, "workers": {}, "sql": {},
    }
    previous = tmp_path / "BENCHMARKS.md"
    previous.write_text(f"old figures\n{HAND_BEGIN}\nThe lead's own words.\n{HAND_END}\n")
    text = render(results, previous=previous)
    assert "The lead's own words." in text and "old figures" not in text


def test_sizes_and_quick_come_from_the_environment_and_the_command_line() -> None:
    from benchmarks.config import BenchConfig

    assert BenchConfig.from_args([], {}).sizes == (1_000_000, 10_000_000)
    # BENCH_FULL adds the large section (10 M and 100 M rows in partitions), not a 100 M one-file size
    assert "large" not in BenchConfig.from_args([], {}).sections
    full = BenchConfig.from_args([], {"BENCH_FULL": "1"})
    assert full.sizes == (1_000_000, 10_000_000) and "large" in full.sections
    assert BenchConfig.from_args(["--full", "--skip", "large"], {}).sections == BenchConfig.from_args([], {}).sections
    assert BenchConfig.from_args(["--only", "large"], {}).sections == ("large",)
    assert BenchConfig.from_args([], {"BENCH_SIZES": "1000000"}).sizes == (1_000_000,)
    assert BenchConfig.from_args(["--sizes", "250k,1M"], {"BENCH_SIZES": "5M"}).sizes == (250_000, 1_000_000)
    quick = BenchConfig.from_args(["--quick"], {})
    assert quick.quick and quick.sizes == (20_000,) and quick.output is None
    assert BenchConfig.from_args(["--only", "gate,ledger"], {}).sections == ("gate", "ledger")
    assert "e2e" not in BenchConfig.from_args(["--skip", "e2e"], {}).sections
    # the whole report is BENCHMARKS.md; a run of some sections writes beside the data instead
    whole = BenchConfig().output
    assert BenchConfig.from_args([], {}).output == whole
    assert BenchConfig.from_args(["--full", "--skip", "large"], {}).output == whole
    data = Path("/some/cache")
    for partial in (["--only", "small"], ["--skip", "e2e"], ["--only", "large"]):
        assert BenchConfig.from_args([*partial, "--data-dir", str(data)], {}).output == data / "partial-report.md"
    assert BenchConfig.from_args(["--only", "small", "--output", "x.md"], {}).output == Path("x.md")
    assert BenchConfig.from_args(["--quick", "--only", "small"], {}).output is None


def test_the_large_section_runs_at_a_tiny_size_and_reads_off_the_three_targets(
        tmp_path: Path, broker_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPAL_", "BENCH_"))}
    env.update(OPAL_BROKER_URL=broker_url, BENCH_LARGE_PARTS="2")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "large", "--data-dir", str(tmp_path / "data"),
         "--output", str(tmp_path / "BENCHMARKS.md"), "--json", str(tmp_path / "results.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())["large"]
    assert sorted(results["sizes"]) == ["200k", "20k"]
    for size in results["sizes"].values():
        assert size["parts"] == 2 and 0 < size["largest_part_rows"] < size["rows"]
        # synthesized straight into partitions, never one file
        assert not list((tmp_path / "data").glob("*.parquet"))
        assert sorted(a["name"] for a in size["algorithms"]) == sorted(NAMES)
        assert size["worker"]["tree_pss_peak_bytes"] > 0
    targets = results["targets"]
    assert sorted(a["name"] for a in targets["algorithms"]) == sorted(NAMES)
    assert targets["rss_bound_bytes"] == 2 * 10**9 + 2 * results["sizes"]["200k"]["largest_part_memory_bytes"]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## 100 M rows: partitions, two pool processes" in text and "OPAL / DuckDB at 200k" in text
