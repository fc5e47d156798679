"""Issue #14 channels, each through the real sandbox (zygote, child, per-run
pseudonyms) and the worker's total release gate: what leaves must depend on
the private data only through noise."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from opal.data import synthesize
from opal.release import PrivacySpec, Release, ReleasePolicy, release
from opal.release.domains import load_domains, resolve, sidecar_for
from opal.sandbox import Runtime
from opal.sandbox.pseudonyms import run_pseudonymised

POLICY = ReleasePolicy()
REGION_DAY = PrivacySpec.from_dict(
    {"unit": "msisdn", "max_groups_per_unit": 30, "groups": {"region": "dataset", "day": "dataset"}}
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("channels") / "cdr.parquet"
    synthesize(out, subscribers=600, days=3, seed=14)
    return out


@pytest.fixture(scope="module")
def runtime(world: Path) -> Iterator[Runtime]:
    with Runtime(tables={"cdr": world}) as rt:
        yield rt


def worker_release(runtime: Runtime, world: Path, source: str, privacy: PrivacySpec = REGION_DAY) -> Release:
    """What a worker does from step 5 on (opal.worker.pipeline): run on fresh
    pseudonyms, then the total gate over the dataset's public domains."""
    domains = resolve(privacy.groups, load_domains(sidecar_for(world)))
    try:
        contributions, units = run_pseudonymised(
            runtime, table="cdr", column="msisdn", source=source, entrypoint="contributions", params={}
        )
    except Exception:  # noqa: BLE001 - the worker's rule: a failed algorithm is no contributions
        contributions, units = None, None
    return release(contributions, privacy=privacy, domains=domains, policy=POLICY, epsilon=1.0, known_units=units)


def labels(r: Release) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in r.table[["region", "day"]].itertuples(index=False, name=None)]


def public_cells(world: Path) -> list[tuple[Any, ...]]:
    d = load_domains(sidecar_for(world))
    return [(region, day) for region in d["region"] for day in d["day"]]


def test_a_label_equal_to_another_subscribers_msisdn_never_leaves(runtime: Runtime, world: Path) -> None:
    source = '''
def contributions(data, params):
    cdr = data.cdr
    out = cdr[["msisdn", "day"]].drop_duplicates()
    return out.assign(region=str(cdr["msisdn"].max()))
'''
    r = worker_release(runtime, world, source)
    assert labels(r) == public_cells(world)
    real = pd.read_parquet(world, columns=["msisdn"])["msisdn"]
    text = json.dumps(r.analyst_view())
    assert str(real.max()) not in text
    assert r.diagnostics["rows_dropped"]["group label missing or outside the public domain"] > 0


def test_bit_coded_labels_never_leave(runtime: Runtime, world: Path) -> None:
    # issue #14: 16 blocks of subscribers under labels bit{i}={(s>>i)&1} gave all bits of a secret
    source = '''
def contributions(data, params):
    cdr = data.cdr
    secret = int(cdr["duration_s"].sum())
    units = cdr[["msisdn", "day"]].drop_duplicates().reset_index(drop=True)
    bit = (units.index % 16)
    return units.assign(region=["bit" + str(b) + "=" + str((secret >> b) & 1) for b in bit])
'''
    r = worker_release(runtime, world, source)
    assert labels(r) == public_cells(world)
    assert "bit" not in json.dumps(r.analyst_view())


def test_one_cell_per_event_of_a_target_does_not_change_the_number_of_rows(runtime: Runtime, world: Path) -> None:
    # issue #14: the number of released cells gave one subscriber's event count
    source = '''
def contributions(data, params):
    cdr = data.cdr
    target = cdr[cdr["msisdn"] == cdr["msisdn"].min()]
    n = len(target)
    units = cdr[["msisdn"]].drop_duplicates().reset_index(drop=True)
    return units.assign(region="Amara", day=units.index % max(n, 1) + 100)
'''
    r = worker_release(runtime, world, source)
    assert len(r.table) == len(public_cells(world)) and labels(r) == public_cells(world)


def test_a_zero_denominator_on_one_subscriber_still_releases(runtime: Runtime, world: Path) -> None:
    # innocent code: one subscriber's ratio is inf; the row is dropped, the rest released
    source = '''
def contributions(data, params):
    cdr = data.cdr
    per = cdr.groupby(["msisdn", "region", "day"]).agg(calls=("duration_s", "sum"), n=("event", "size"))
    per = per.reset_index()
    first = per["msisdn"] == per["msisdn"].min()
    per["n"] = per["n"].where(~first, 0)
    per["value"] = per["calls"] / per["n"]
    return per[["msisdn", "region", "day", "value"]]
'''
    mean = PrivacySpec.from_dict(
        {"unit": "msisdn", "aggregation": "mean", "value_bounds": [0, 3600], "max_groups_per_unit": 30,
         "groups": {"region": "dataset", "day": "dataset"}}
    )
    r = worker_release(runtime, world, source, mean)
    assert labels(r) == public_cells(world)
    assert r.cells_released > 0
    assert r.diagnostics["rows_dropped"] == {"value not finite": r.diagnostics["rows_dropped"]["value not finite"]}


def test_a_hard_coded_real_msisdn_matches_no_row(runtime: Runtime, world: Path) -> None:
    real = int(pd.read_parquet(world, columns=["msisdn"])["msisdn"].iloc[0])
    source = f'''
def contributions(data, params):
    cdr = data.cdr
    return cdr[cdr["msisdn"] == {real}][["msisdn", "region", "day"]].drop_duplicates()
'''
    found, units = run_pseudonymised(
        runtime, table="cdr", column="msisdn", source=source, entrypoint="contributions", params={}
    )
    assert len(found) == 0
    # the control: without pseudonyms (no gate may then accept the result) the same code finds the target
    plain = runtime.run(source=source, entrypoint="contributions", params={})
    assert len(plain) > 0
    # pseudonyms change from run to run, and the gate accepts only this run's
    probe = '''
def contributions(data, params):
    return data.cdr[["msisdn"]].drop_duplicates().sort_values("msisdn").head(5)
'''
    a, units_a = run_pseudonymised(runtime, table="cdr", column="msisdn", source=probe,
                                   entrypoint="contributions", params={})
    b, _ = run_pseudonymised(runtime, table="cdr", column="msisdn", source=probe,
                             entrypoint="contributions", params={})
    assert set(a["msisdn"]).isdisjoint(set(b["msisdn"]))
    assert units_a.contains(pd.Index(a["msisdn"])).all()
    assert not units_a.contains(pd.Index(b["msisdn"])).any()
    assert units.count == units_a.count == pd.read_parquet(world, columns=["msisdn"])["msisdn"].nunique()


def test_a_column_named_after_raw_rows_is_not_echoed(runtime: Runtime, world: Path) -> None:
    source = '''
def contributions(data, params):
    cdr = data.cdr
    out = cdr[["msisdn", "region", "day"]].drop_duplicates()
    name = "_".join(str(v) for v in cdr["duration_s"].head(4).tolist()) + "_" + str(cdr["cell_id"].iloc[0])
    out[name] = 1
    return out
'''
    r = worker_release(runtime, world, source)
    raw = pd.read_parquet(world).head(4)
    secret = "_".join(str(v) for v in raw["duration_s"].tolist())
    assert secret not in json.dumps(r.to_dict())
    assert r.diagnostics["contributions_refused"].startswith("contributions have 1 undeclared column(s)")
    assert labels(r) == public_cells(world)


def test_pseudonyms_survive_a_float_unit_column_and_are_no_phone_numbers(runtime: Runtime, world: Path) -> None:
    source = '''
def contributions(data, params):
    cdr = data.cdr
    out = cdr[["msisdn", "region", "day"]].drop_duplicates()
    return out.assign(msisdn=out["msisdn"].astype("float64"))
'''
    r = worker_release(runtime, world, source)
    assert r.diagnostics["rows_dropped"] == {}
    assert r.cells_released > 0
    probe = "def contributions(data, params):\n    return data.cdr[['msisdn']].drop_duplicates()\n"
    ids, _ = run_pseudonymised(runtime, table="cdr", column="msisdn", source=probe, entrypoint="contributions",
                               params={})
    assert ids["msisdn"].map(lambda v: len(str(v))).eq(16).all()
