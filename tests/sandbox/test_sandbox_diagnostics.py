"""Diagnostics on the statistician's own data stay useful: `opal algo test`
names a column that is not in the data and the closest one that is (from the
source and the schema, never from data values)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opal.errors import OpalError
from opal.sandbox import Runtime

ROOT = Path(__file__).resolve().parents[2]


def _failure(runtime: Runtime, body: str) -> OpalError:
    source = f"def contributions(data, params):\n    {body}\n"
    with pytest.raises(OpalError) as info:
        runtime.run(source=source, entrypoint="contributions", params={})
    return info.value


def test_misspelt_column_in_brackets_names_the_column_it_meant(runtime: Runtime) -> None:
    error = _failure(runtime, "return data.cdr[['msisdn', 'duraton_s']]")
    assert error.exit_code == 8
    assert str(error) == (
        "algorithm.py:2: contributions() raised KeyError "
        "(column 'duraton_s' is not in data.cdr; did you mean duration_s?)"
    )


def test_misspelt_column_as_attribute_names_the_column_it_meant(runtime: Runtime) -> None:
    error = _failure(runtime, "return data.cdr.regoin")
    assert error.exit_code == 4
    assert str(error).endswith("column 'regoin' is not in data.cdr; did you mean region?")


def test_no_suggestion_comes_from_data_values(runtime: Runtime) -> None:
    # the pivot's columns are region names (data); 'nort' is close to 'north'
    error = _failure(
        runtime,
        "p = data.cdr.pivot_table(index='msisdn', columns='region', values='day', aggfunc='sum')\n"
        "    return p['nort']",
    )
    assert "north" not in str(error) and "did you mean" not in str(error)


def test_algo_test_cli_prints_the_hint(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "algorithms" / "call_volume", bundle)
    algorithm = bundle / "algorithm.py"
    assert 'cdr["day"].between' in algorithm.read_text()
    algorithm.write_text(algorithm.read_text().replace('cdr["day"].between', 'cdr["dya"].between'))
    data = tmp_path / "cdr.parquet"
    env = {"PATH": "/usr/bin:/bin", "OPAL_HOME": str(tmp_path / "home")}
    run = [sys.executable, "-m", "opal"]
    subprocess.run([*run, "dataset", "synth", str(data), "--subscribers", "50", "--days", "3", "--seed", "1"],
                   check=True, env=env, capture_output=True)
    proc = subprocess.run(
        [*run, "algo", "test", str(bundle), "--dataset", str(data), "--params", '{"start_day": 0, "end_day": 1}'],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 8, proc.stderr
    assert "column 'dya' is not in data.cdr; did you mean day?" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
