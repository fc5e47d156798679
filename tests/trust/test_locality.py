"""The leave-one-out unit-locality probe: it flags an algorithm whose rows for
one subscriber depend on others, and passes the six reference algorithms."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opal.bundle.registry import Bundle
from opal.data import synthesize
from opal.sandbox import Runtime
from opal.trust.locality import MIN_SAMPLE, example_params, probe
from tests.conftest import ALGORITHMS

PARAMS = {
    "population_density": {"start_day": 0, "end_day": 6},
    "home_location": {"start_day": 0, "end_day": 6},
    "od_matrix": {"before_start_day": 0, "before_end_day": 3, "after_start_day": 4, "after_end_day": 6},
    "displacement": {"origin_region": "Amara", "shock_day": 4, "baseline_days": 4, "days_after": 2},
    "call_volume": {"start_day": 0, "end_day": 6},
    "unique_visitors": {"start_day": 0, "end_day": 6},
}

# Labels by rank among all subscribers: removing one shifts the rank of every later one.
CROSS_UNIT = '''
def contributions(data, params):
    cdr = data.cdr
    per = cdr.groupby("msisdn").size().reset_index(name="events")
    rank = per["events"].rank(method="first").astype(int)
    per["region"] = rank.mod(2).map({0: "Amara", 1: "Belcora"})
    return per[["msisdn", "region"]]
'''


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    data = tmp_path_factory.mktemp("locality") / "cdr.parquet"
    synthesize(data, subscribers=200, days=7, seed=8)
    with Runtime(tables={"cdr": data}) as rt:
        yield rt


def test_the_probe_flags_an_algorithm_that_is_not_unit_local(runtime: Runtime) -> None:
    report = probe(runtime, source=CROSS_UNIT, entrypoint="contributions", params={}, table="cdr", column="msisdn")
    assert report.sampled >= MIN_SAMPLE
    assert not report.local and report.breaking > 0
    assert report.worst > 10
    assert report.summary.startswith("not unit-local: removing one subscriber changed ")
    assert "other subscribers' rows" in report.summary


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_the_probe_passes_the_reference_algorithms(runtime: Runtime, name: str) -> None:
    bundle = Bundle.from_folder(ALGORITHMS / name)
    report = probe(
        runtime, source=bundle.source, entrypoint=bundle.manifest.entrypoint, params=PARAMS[name],
        table="cdr", column="msisdn",
    )
    assert report.sampled >= MIN_SAMPLE
    assert report.local, report.summary
    assert report.summary.startswith("unit-local: removing each of ")


def test_probe_params_come_from_the_schema_defaults() -> None:
    schema = Bundle.from_folder(ALGORITHMS / "population_density").manifest.parameters
    assert example_params(schema) == {"start_day": 0, "end_day": 0}
    displacement = Bundle.from_folder(ALGORITHMS / "displacement").manifest.parameters
    assert example_params(displacement) is None  # origin_region has no default: --params


def test_algo_test_locality_flag_reports_the_probe(tmp_path: Path) -> None:
    data = tmp_path / "cdr.parquet"
    synthesize(data, subscribers=120, days=2, seed=2)
    proc = subprocess.run(
        [sys.executable, "-m", "opal", "--home", str(tmp_path / "home"), "algo", "test",
         str(ALGORITHMS / "population_density"), "--dataset", str(data),
         "--params", '{"start_day": 0, "end_day": 1}', "--locality"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "locality probe: unit-local: removing each of 50 sampled subscribers" in proc.stdout
    # a local test spends nothing, and says so once, without contradicting itself
    assert "(local test, no budget spent)" in proc.stdout
    assert "ε 1.0 (noise as a run would add; nothing spent)" in proc.stdout and "ε spent" not in proc.stdout
