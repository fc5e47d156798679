"""The reference algorithms in algorithms/ run unchanged in the sandbox and
give exactly what plain pandas gives."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from opal.sandbox import Runtime, check_source

ALGORITHMS = Path(__file__).resolve().parents[2] / "algorithms"
BUNDLES = sorted(p.parent.name for p in ALGORITHMS.glob("*/algorithm.py"))

PARAMS = {
    "call_volume": {"start_day": 0, "end_day": 6},
    "population_density": {"start_day": 0, "end_day": 6},
    "home_location": {"start_day": 0, "end_day": 6},
    "unique_visitors": {"start_day": 0, "end_day": 6},
    "od_matrix": {"before_start_day": 0, "before_end_day": 4, "after_start_day": 7, "after_end_day": 11,
                  "include_stayers": True},
}


@pytest.fixture(scope="module")
def synth_runtime(tmp_path_factory: pytest.TempPathFactory) -> tuple[Runtime, pd.DataFrame]:
    synth = pytest.importorskip("opal.data.synth")
    path = tmp_path_factory.mktemp("refalgo") / "cdr.parquet"
    synth.synthesize(path, subscribers=300, days=14, seed=7)
    rt = Runtime(tables={"cdr": path})
    yield rt, pd.read_parquet(path)
    rt.close()


def _params(name: str, frame: pd.DataFrame) -> dict:
    if name == "displacement":
        return {"origin_region": str(sorted(frame["region"].unique())[0]), "shock_day": 7,
                "baseline_days": 7, "days_after": 6}
    return PARAMS.get(name, {"start_day": 0, "end_day": 6})


@pytest.mark.parametrize("name", BUNDLES)
def test_reference_algorithm_matches_plain_pandas(name: str, synth_runtime: tuple[Runtime, pd.DataFrame]) -> None:
    runtime, frame = synth_runtime
    source = (ALGORITHMS / name / "algorithm.py").read_text()
    check_source(source)
    params = _params(name, frame)
    sandboxed = runtime.run(source=source, entrypoint="contributions", params=params)
    namespace: dict = {}
    exec(compile(source, f"{name}/algorithm.py", "exec"), namespace)  # trusted reference run
    direct = namespace["contributions"](SimpleNamespace(cdr=frame), params)
    assert len(sandboxed) > 0
    pd.testing.assert_frame_equal(
        sandboxed.reset_index(drop=True), direct.reset_index(drop=True), check_dtype=False
    )
