"""`opal algo test` on a partitioned dataset directory: partition by partition,
as a worker's partition tasks run it, noise once; the same release as on the
file the directory was partitioned from (exact before noise)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from opal.bundle.registry import Bundle
from opal.data.partition import read_partitioned
from opal.data.synth import synthesize
from opal.devloop import dataset_domains, dataset_files, local_aggregate
from opal.release.domains import resolve
from tests.conftest import ALGORITHMS, Opal

PARTS = 4
# call_volume: a mean over callers per (region, day); 12 regions × 2 days is at most
# 24 cells a caller, under its max_groups_per_unit of 30, so bounding selects nothing
# at random and the pre-noise aggregate is exact, cell for cell.
ALGO = ALGORITHMS / "call_volume"
PARAMS = {"start_day": 0, "end_day": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("algo-test-parts") / "cdr.parquet"
    synthesize(out, subscribers=400, days=2, seed=7)
    return out


@pytest.fixture
def parts(opal: Opal, data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "parts"
    opal("dataset", "partition", str(data), str(out), "--parts", str(PARTS), check=True)
    assert read_partitioned(out).parts == PARTS
    return out


def _test(opal: Opal, dataset: Path, *extra: str) -> dict[str, Any]:
    out = opal.json("algo", "test", str(ALGO), "--dataset", str(dataset), "--params", json.dumps(PARAMS), *extra)
    assert isinstance(out, dict)
    return out


def _cells(result: dict[str, Any]) -> list[dict[str, Any]]:
    columns = result["table"]["columns"]
    return [dict(zip(columns, row, strict=True)) for row in result["table"]["rows"]]


def test_algo_test_on_a_partitioned_directory_releases_what_the_file_releases(
        opal: Opal, data: Path, parts: Path) -> None:
    one = _test(opal, data)
    split = _test(opal, parts)
    # everything but the noisy values is the same: the table's columns and cells, the
    # mechanism (ε split, sensitivities, noise plans) and the exact diagnostics (a mean's
    # noise_scale divides by the noisy count, so it is noisy too)
    assert split["table"]["columns"] == one["table"]["columns"]
    keys = ("region", "day")
    assert [tuple(c[k] for k in keys) for c in _cells(split)] == [tuple(c[k] for k in keys) for c in _cells(one)]
    assert split["mechanism"] == one["mechanism"] and split["epsilon"] == one["epsilon"]
    assert split["diagnostics"] == one["diagnostics"]
    assert one["diagnostics"]["units_in"] > 300 and one["diagnostics"]["rows_in"] > 0
    assert split["bundle"] == one["bundle"]
    # and the noisy values are the truth's, within the stated intervals
    cdr = pd.read_parquet(data)
    cdr = cdr[cdr["day"].between(0, 1)]
    per_caller = cdr[cdr["event"] == "call"].groupby(["region", "day", "msisdn"])["duration_s"].sum().clip(0, 1800)
    truth = per_caller.groupby(["region", "day"]).mean()
    checked = 0
    for cell in _cells(split):
        if cell["suppressed"]:
            continue
        half = (cell["ci_high"] - cell["ci_low"]) / 2
        assert abs(cell["mean"] - truth[(cell["region"], cell["day"])]) <= 3 * half + 1, cell
        checked += 1
    assert checked > 0


def test_algo_test_prints_the_same_report_for_a_directory(opal: Opal, data: Path, parts: Path) -> None:
    def lines(dataset: Path) -> list[str]:
        proc = opal("algo", "test", str(ALGO), "--dataset", str(dataset), "--params", json.dumps(PARAMS), check=True)
        return proc.stdout.splitlines()

    one, split = lines(data), lines(parts)
    assert len(split) == len(one)
    assert split[0] == one[0] == "call_volume (local test, no budget spent): 24 cell(s)"
    assert split[-1] == one[-1]
    assert split[-2].startswith("cells released: ") and one[-2].startswith("cells released: ")


def test_pre_noise_aggregate_of_the_partitions_equals_the_file_aggregate(opal: Opal, data: Path, parts: Path) -> None:
    bundle = Bundle.from_folder(ALGO)
    domains = resolve(bundle.manifest.privacy.groups, dataset_domains(data))
    whole_files = dataset_files(data, schema="cdr")
    split_files = dataset_files(parts, schema="cdr")
    assert whole_files == (data,) and len(split_files) == PARTS
    assert resolve(bundle.manifest.privacy.groups, dataset_domains(parts)) == domains   # the copied sidecar
    whole = local_aggregate(bundle, files=whole_files, params=PARAMS, domains=domains)
    split = local_aggregate(bundle, files=split_files, params=PARAMS, domains=domains)
    assert whole.units.sum() > 0
    np.testing.assert_array_equal(split.units, whole.units)
    assert whole.sums is not None and split.sums is not None
    np.testing.assert_allclose(split.sums, whole.sums, rtol=1e-12)
    assert (split.rows_in, split.units_in, split.dropped) == (whole.rows_in, whole.units_in, whole.dropped)
    # each partition contributed (the split was real)
    singles = [local_aggregate(bundle, files=(f,), params=PARAMS, domains=domains) for f in split_files]
    assert all(s.units_in > 0 for s in singles)
    assert sum(s.units_in for s in singles) == whole.units_in


def test_locality_probe_runs_on_a_partitioned_directory(opal: Opal, parts: Path) -> None:
    out = _test(opal, parts, "--locality")
    assert out["locality"]["breaking"] == 0 and out["locality"]["sampled"] > 0


def test_a_directory_that_is_not_a_clean_partitioning_is_refused(opal: Opal, data: Path, parts: Path,
                                                                 tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(data, plain / "cdr.parquet")
    proc = opal("algo", "test", str(ALGO), "--dataset", str(plain), "--params", json.dumps(PARAMS))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"opal: error: {plain} is a directory but not a partitioned dataset; pass a .parquet "
                           "or .csv file, or a directory made by opal dataset partition\n")
    # a unit in two partitions would be bounded twice: refused, as registration refuses it
    (parts / "part=1" / "part-0.parquet").write_bytes((parts / "part=0" / "part-0.parquet").read_bytes())
    proc = opal("algo", "test", str(ALGO), "--dataset", str(parts), "--params", json.dumps(PARAMS))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "some units have rows in more than one partition" in proc.stderr

