"""The reference algorithms, called directly on a seeded synthetic world and
checked against independent plain-pandas computations and the shock's ground truth.

(The lead wires them through the real sandbox and release gate elsewhere.)
"""

import importlib.util
import json
import tomllib
import types
from pathlib import Path

import jsonschema
import pandas as pd
import pytest

from opal.data import Shock, synthesize

ALGORITHMS = Path(__file__).resolve().parents[2] / "algorithms"
NAMES = ["population_density", "home_location", "od_matrix", "displacement", "call_volume", "unique_visitors"]
SHOCK = Shock(day=7, region="Cendra", share=0.3)
NIGHT = [20, 21, 22, 23, 0, 1, 2, 3, 4, 5, 6]


def load(name):
    spec = importlib.util.spec_from_file_location(f"opal_reference_{name}", ALGORITHMS / name / "algorithm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.contributions


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("cdr") / "cdr.parquet"
    summary = synthesize(out, subscribers=10_000, days=14, seed=42, shock=SHOCK)
    truth = json.loads(summary.ground_truth_path.read_text())
    return pd.read_parquet(out), truth


def run(name, cdr, params):
    before = cdr.copy()
    result = load(name)(types.SimpleNamespace(cdr=cdr), params)
    pd.testing.assert_frame_equal(cdr, before)  # the algorithm must not touch its input
    assert isinstance(result, pd.DataFrame)
    assert result.columns[0] == "msisdn"
    assert result["msisdn"].isin(cdr["msisdn"]).all()
    return result


def distinct_units(contributions, groups):
    return contributions.groupby(groups)["msisdn"].nunique().sort_index()


def independent_home(cdr, first_day, last_day):
    """Modal night region per subscriber, ties to the alphabetically first region."""
    window = cdr[(cdr.day >= first_day) & (cdr.day <= last_day)]
    night = window[window.timestamp.dt.hour.isin(NIGHT)]
    table = pd.crosstab(night.msisdn, night.region)  # columns sorted: idxmax picks the first
    return table.idxmax(axis=1)


def top_destinations(truth, n):
    return sorted(truth["destinations"], key=truth["destinations"].get, reverse=True)[:n]


# --- manifests ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_manifest_parses_and_its_parameters_are_a_json_schema(name):
    folder = ALGORITHMS / name
    manifest = tomllib.loads((folder / "opal.toml").read_text())
    assert manifest["name"] == name
    assert manifest["entrypoint"] == "contributions"
    assert manifest["dataset"] == "cdr"
    assert manifest["privacy"]["unit"] == "msisdn"
    assert manifest["privacy"]["aggregation"] in ("count", "sum", "mean")
    assert manifest["privacy"]["max_groups_per_unit"] >= 1
    if manifest["privacy"]["aggregation"] != "count":
        low, high = manifest["privacy"]["value_bounds"]
        assert low < high
    schema = manifest["parameters"]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])
    assert (folder / "README.md").read_text().strip()


@pytest.mark.parametrize("name", NAMES)
def test_manifest_is_accepted_by_the_platform_parser(name):
    from opal.bundle.manifest import Manifest

    manifest = Manifest.parse((ALGORITHMS / name / "opal.toml").read_bytes())
    assert manifest.name == name


@pytest.mark.parametrize("name", NAMES)
def test_every_group_column_has_a_public_domain_from_the_synthetic_world(name, tmp_path):
    from opal.bundle.manifest import Manifest
    from opal.data import synthesize
    from opal.release.domains import cell_count, load_domains, resolve

    manifest = Manifest.parse((ALGORITHMS / name / "opal.toml").read_bytes())
    assert manifest.privacy.groups, "declare [privacy.groups]"
    out = tmp_path / "cdr.parquet"
    summary = synthesize(out, subscribers=50, days=14, seed=1)
    domains = resolve(manifest.privacy.groups, load_domains(summary.domains_path))
    assert 1 < cell_count(domains) <= 100_000


def test_a_scaffolded_bundle_declares_its_domains_and_runs(tmp_path):
    from opal.bundle.scaffold import scaffold
    from opal.data import synthesize
    from opal.devloop import test_bundle

    scaffold(tmp_path / "b", "scaffolded")
    synthesize(tmp_path / "cdr.parquet", subscribers=300, days=2, seed=1)
    result = test_bundle(tmp_path / "b", dataset=tmp_path / "cdr.parquet", params={"start_day": 0, "end_day": 1})
    assert result["table"]["columns"][0] == "region" and len(result["table"]["rows"]) == 12


def test_unknown_parameters_are_refused_by_the_schema():
    schema = tomllib.loads((ALGORITHMS / "population_density" / "opal.toml").read_text())["parameters"]
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"start_day": 0, "end_day": 3})
    assert not validator.is_valid({"start_day": 0, "end_day": 3, "sql": "drop"})
    assert not validator.is_valid({"start_day": -1, "end_day": 3})
    assert not validator.is_valid({"start_day": 0})


# --- population_density --------------------------------------------------------


def test_population_density_counts_distinct_subscribers_per_region_day(world):
    cdr, _ = world
    got = run("population_density", cdr, {"start_day": 2, "end_day": 9})
    assert list(got.columns) == ["msisdn", "region", "day"]
    assert not got.duplicated().any()
    window = cdr[(cdr.day >= 2) & (cdr.day <= 9)]
    expected = window.groupby(["region", "day"]).msisdn.nunique().sort_index()
    pd.testing.assert_series_equal(distinct_units(got, ["region", "day"]), expected)
    assert sorted(got.day.unique()) == list(range(2, 10))


def test_population_density_refuses_a_reversed_window_without_data():
    spec = importlib.util.spec_from_file_location("opal_reference_pd_check", ALGORITHMS / "population_density" / "algorithm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="end_day"):
        module.check_params({"start_day": 5, "end_day": 1})
    module.check_params({"start_day": 1, "end_day": 5})


def test_a_reversed_window_is_refused_by_algo_test_before_the_run(tmp_path):
    from opal.devloop import test_bundle
    from opal.errors import BadInputError

    synthesize(tmp_path / "cdr.parquet", subscribers=100, days=2, seed=1)
    with pytest.raises(BadInputError) as exc:
        test_bundle(ALGORITHMS / "population_density", dataset=tmp_path / "cdr.parquet",
                    params={"start_day": 1, "end_day": 0})
    assert exc.value.exit_code == 2
    assert str(exc.value) == (
        "the bundle's check_params refused the parameters: algorithm.py:13: check_params() raised "
        "ValueError (an operation got an invalid value)"
    )


# --- home_location ---------------------------------------------------------------


def test_home_location_counts_subscribers_per_modal_night_region(world):
    cdr, _ = world
    got = run("home_location", cdr, {"start_day": 0, "end_day": 6})
    assert list(got.columns) == ["msisdn", "home_region"]
    assert got.msisdn.is_unique
    home = independent_home(cdr, 0, 6)
    expected = home.value_counts().rename_axis("home_region").rename("msisdn").sort_index()
    pd.testing.assert_series_equal(distinct_units(got, ["home_region"]), expected)
    # and per subscriber, not just per cell
    assert got.set_index("msisdn").home_region.sort_index().equals(home.sort_index().rename("home_region"))


def test_home_location_honours_custom_night_hours(world):
    cdr, _ = world
    got = run("home_location", cdr, {"start_day": 0, "end_day": 6, "night_start_hour": 0, "night_end_hour": 5})
    window = cdr[cdr.day <= 6]
    night = window[window.timestamp.dt.hour < 5]
    assert set(got.msisdn) == set(night.msisdn)


# --- od_matrix ---------------------------------------------------------------------


def test_od_matrix_counts_home_changes_between_windows(world):
    cdr, _ = world
    got = run("od_matrix", cdr, {"before_start_day": 0, "before_end_day": 6,
                                 "after_start_day": 7, "after_end_day": 13})
    assert list(got.columns) == ["msisdn", "origin", "destination"]
    assert got.msisdn.is_unique and (got.origin != got.destination).all()
    both = pd.concat([independent_home(cdr, 0, 6).rename("origin"),
                      independent_home(cdr, 7, 13).rename("destination")], axis=1, join="inner")
    moved = both[both.origin != both.destination]
    expected = moved.groupby(["origin", "destination"]).size().rename("msisdn").sort_index()
    pd.testing.assert_series_equal(distinct_units(got, ["origin", "destination"]), expected)


def test_od_matrix_recovers_the_shock_flows(world):
    cdr, truth = world
    got = run("od_matrix", cdr, {"before_start_day": 0, "before_end_day": 6,
                                 "after_start_day": 7, "after_end_day": 13})
    flows = got[got.origin == "Cendra"].destination.value_counts()
    assert list(flows.index[:2]) == top_destinations(truth, 2)
    # the shock region's outflow dwarfs any other region's
    outflow = got.origin.value_counts()
    assert outflow.index[0] == "Cendra"


def test_od_matrix_can_include_stayers(world):
    cdr, _ = world
    params = {"before_start_day": 0, "before_end_day": 6, "after_start_day": 7, "after_end_day": 13}
    stayers = run("od_matrix", cdr, {**params, "include_stayers": True})
    movers = run("od_matrix", cdr, params)
    assert len(stayers) > len(movers)
    assert set(movers.msisdn) < set(stayers.msisdn)


# --- displacement -------------------------------------------------------------------


DISPLACEMENT = {"origin_region": "Cendra", "shock_day": 7, "baseline_days": 7, "days_after": 6}


def test_displacement_matches_an_independent_computation(world):
    cdr, _ = world
    got = run("displacement", cdr, DISPLACEMENT)
    assert list(got.columns) == ["msisdn", "destination", "days_since_shock"]
    assert not got.duplicated(["msisdn", "days_since_shock"]).any()
    home = independent_home(cdr, 0, 6)
    residents = set(home[home == "Cendra"].index)
    rows = []
    for day in range(7, 14):
        where = independent_home(cdr, day, day)
        where = where[where.index.isin(residents)]
        rows.append(where.value_counts().rename_axis("destination").rename("msisdn").to_frame()
                    .assign(days_since_shock=day - 7).reset_index())
    expected = (pd.concat(rows).set_index(["destination", "days_since_shock"]).msisdn.sort_index())
    pd.testing.assert_series_equal(distinct_units(got, ["destination", "days_since_shock"]), expected)


def test_displacement_recovers_the_injected_shock(world):
    cdr, truth = world
    got = run("displacement", cdr, DISPLACEMENT)
    cells = got.groupby(["days_since_shock", "destination"]).msisdn.nunique()
    per_day = cells.groupby(level="days_since_shock")
    stayed = cells.xs("Cendra", level="destination")
    share_moved = (1 - stayed / per_day.sum()).mean()
    assert abs(share_moved - truth["moved_share"]) <= 0.05
    away = cells.drop("Cendra", level="destination").groupby(level="destination").sum()
    assert list(away.sort_values(ascending=False).index[:2]) == top_destinations(truth, 2)


def test_displacement_before_the_shock_shows_no_one_moved(world):
    cdr, _ = world
    got = run("displacement", cdr, {"origin_region": "Cendra", "shock_day": 4, "baseline_days": 4, "days_after": 2})
    share_away = (got.destination != "Cendra").mean()
    assert share_away < 0.1


# --- call_volume ------------------------------------------------------------------------


def test_call_volume_contributes_each_callers_seconds(world):
    cdr, _ = world
    got = run("call_volume", cdr, {"start_day": 0, "end_day": 13})
    assert list(got.columns) == ["msisdn", "region", "day", "value"]
    assert not got.duplicated(["msisdn", "region", "day"]).any()
    calls = cdr[cdr.event == "call"]
    expected_units = calls.groupby(["region", "day"]).msisdn.nunique().sort_index()
    pd.testing.assert_series_equal(distinct_units(got, ["region", "day"]), expected_units)
    expected_total = calls.groupby(["region", "day"]).duration_s.sum().rename("value").sort_index()
    pd.testing.assert_series_equal(got.groupby(["region", "day"]).value.sum().sort_index(), expected_total)
    assert (got.value > 0).all()


# --- unique_visitors ----------------------------------------------------------------------


def test_unique_visitors_excludes_residents(world):
    cdr, _ = world
    got = run("unique_visitors", cdr, {"start_day": 0, "end_day": 6})
    assert list(got.columns) == ["msisdn", "region"]
    assert not got.duplicated().any()
    home = independent_home(cdr, 0, 6)
    window = cdr[cdr.day <= 6]
    expected = {}
    for region, seen in window.groupby("region").msisdn:
        visitors = set(seen) & set(home.index)
        visitors -= set(home[home == region].index)
        expected[region] = len(visitors)
    expected = pd.Series(expected, name="msisdn").rename_axis("region").sort_index()
    pd.testing.assert_series_equal(distinct_units(got, ["region"]), expected)
    # no subscriber visits their own home region
    joined = got.merge(home.rename("home").reset_index(), on="msisdn")
    assert (joined.region != joined.home).all()


@pytest.mark.parametrize("name", NAMES)
def test_source_passes_the_sandbox_static_policy(name):
    policy = pytest.importorskip("opal.sandbox.policy")
    policy.check_source((ALGORITHMS / name / "algorithm.py").read_text(), entrypoint="contributions")


def test_a_domain_product_over_max_cells_is_refused_by_algo_check_without_data(tmp_path):
    import shutil

    from opal.devloop import check_bundle
    from opal.errors import ReleaseRefused

    folder = tmp_path / "wide"
    shutil.copytree(ALGORITHMS / "population_density", folder)
    toml = folder / "opal.toml"
    toml.write_text(toml.read_text().replace('day = "dataset"', "day = { range = [0, 99999] }\nhour = { range = [0, 23] }"))
    with pytest.raises(ReleaseRefused) as exc:
        check_bundle(folder)
    assert exc.value.exit_code == 3
    assert "the group domains have 2400000 cells in all, more than the policy limit max_cells = 100000" in str(exc.value)


REFERENCE_PARAMS = {
    "population_density": {"start_day": 2, "end_day": 9},
    "home_location": {"start_day": 0, "end_day": 13},
    "od_matrix": {"before_start_day": 0, "before_end_day": 6, "after_start_day": 7, "after_end_day": 13},
    "displacement": {"origin_region": SHOCK.region, "shock_day": SHOCK.day},
    "call_volume": {"start_day": 0, "end_day": 13},
    "unique_visitors": {"start_day": 0, "end_day": 13},
}


@pytest.mark.parametrize("name", NAMES)
def test_each_reference_bundle_reads_only_the_columns_it_declares(name, world):
    """The bundle's ``reads`` is what the sandbox shows it: on the table cut to
    those columns it must give exactly what it gives on every column."""
    from opal.bundle.manifest import Manifest

    cdr, _ = world
    reads = Manifest.parse((ALGORITHMS / name / "opal.toml").read_bytes()).reads
    assert reads is not None and set(reads) < set(cdr.columns)
    whole = run(name, cdr, REFERENCE_PARAMS[name])
    cut = run(name, cdr[[c for c in cdr.columns if c in reads]], REFERENCE_PARAMS[name])
    assert len(whole) > 0
    pd.testing.assert_frame_equal(cut.reset_index(drop=True), whole.reset_index(drop=True))


def _with_reads(tmp_path, name, reads):
    """A copy of reference bundle ``name`` whose opal.toml declares ``reads`` (TOML text)."""
    import shutil

    from opal.bundle.manifest import Manifest

    folder = tmp_path / "b"
    shutil.copytree(ALGORITHMS / name, folder)
    toml = folder / "opal.toml"
    declared = Manifest.parse(toml.read_bytes()).reads
    line = "reads = [" + ", ".join(f'"{c}"' for c in declared) + "]"
    assert line in toml.read_text()
    toml.write_text(toml.read_text().replace(line, f"reads = {reads}"))
    return folder


def _opal(tmp_path, *args):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "opal", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPAL_HOME": str(tmp_path / "home")})


@pytest.mark.parametrize(("reads", "message"), [
    ('"msisdn"', 'reads must be a list of column names, e.g. reads = ["msisdn", "day"]'),
    ("[]", 'reads must be a list of column names, e.g. reads = ["msisdn", "day"]'),
    ('["msisdn", 3]', 'reads must be a list of column names, e.g. reads = ["msisdn", "day"]'),
    ('["day", "region"]', "reads must include the privacy unit column 'msisdn'"),
    ('["msisdn", "day", "day"]', "reads names day more than once"),
])
def test_a_malformed_reads_is_refused_naming_the_fix(reads, message, tmp_path):
    from opal.devloop import check_bundle
    from opal.errors import BadInputError

    folder = _with_reads(tmp_path, "population_density", reads)
    with pytest.raises(BadInputError) as exc:
        check_bundle(folder)
    assert exc.value.exit_code == 2
    assert str(exc.value) == f"{folder}/opal.toml: {message}"


@pytest.mark.parametrize(("categorical", "message"), [
    ('"region"', 'categorical must be a list of text column names, e.g. categorical = ["region"]'),
    ('["region", 3]', 'categorical must be a list of text column names, e.g. categorical = ["region"]'),
    ('["region", "region"]', "categorical names region more than once"),
    ('["msisdn"]', "categorical cannot hold the privacy unit column 'msisdn' (the sandbox replaces it by numbers)"),
    ('["event"]', "categorical names event, which reads does not list"),
])
def test_a_malformed_categorical_is_refused_naming_the_fix(categorical, message, tmp_path):
    from opal.devloop import check_bundle
    from opal.errors import BadInputError

    folder = _with_reads(tmp_path, "population_density", '["msisdn", "day", "region"]')
    toml = folder / "opal.toml"
    toml.write_text(toml.read_text().replace('categorical = ["region"]', f"categorical = {categorical}"))
    with pytest.raises(BadInputError) as exc:
        check_bundle(folder)
    assert exc.value.exit_code == 2
    assert str(exc.value) == f"{folder}/opal.toml: {message}"


def test_a_bundle_asking_for_a_number_column_as_categorical_is_refused_by_algo_check(tmp_path):
    folder = _with_reads(tmp_path, "population_density", '["msisdn", "day", "region"]')
    toml = folder / "opal.toml"
    toml.write_text(toml.read_text().replace('categorical = ["region"]', 'categorical = ["region", "day"]'))
    proc = _opal(tmp_path, "algo", "check", str(folder))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "opal: error: population_density 1.0.0 asks for day as categorical, but only text columns can be; "
        "the text columns of schema 'cdr': region, event"
    )


def test_a_bundle_reading_a_column_its_schema_lacks_is_refused_by_algo_check(tmp_path):
    folder = _with_reads(tmp_path, "population_density", '["msisdn", "day", "region", "imei"]')
    proc = _opal(tmp_path, "algo", "check", str(folder))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "opal: error: population_density 1.0.0 reads column(s) imei that schema 'cdr' does not have; its columns: "
        "msisdn, timestamp, day, cell_id, region, event, duration_s"
    )


def test_algo_check_warns_of_a_column_the_source_names_but_reads_leaves_out(tmp_path):
    import json as json_

    folder = _with_reads(tmp_path, "call_volume", '["msisdn", "day", "region", "duration_s"]')
    toml = folder / "opal.toml"
    toml.write_text(toml.read_text().replace('categorical = ["region", "event"]', 'categorical = ["region"]'))
    proc = _opal(tmp_path, "algo", "check", str(folder))
    assert proc.returncode == 0                          # a hint, not a refusal: names can be built at run time
    assert proc.stderr.strip() == (
        "warning: algorithm.py:23 names column 'event', which reads does not list: the sandbox will not show it "
        "(add it to reads in opal.toml if the algorithm reads it)"
    )
    as_json = _opal(tmp_path, "algo", "check", str(folder), "--json")
    assert json_.loads(as_json.stdout)["warnings"] == [proc.stderr.strip().removeprefix("warning: ")]
    clean = _opal(tmp_path, "algo", "check", str(ALGORITHMS / "call_volume"))
    assert clean.returncode == 0 and clean.stderr == ""


@pytest.mark.parametrize("name", NAMES)
def test_no_reference_bundle_names_a_column_it_does_not_read(name):
    from opal.bundle.registry import Bundle
    from opal.devloop import read_warnings

    assert read_warnings(Bundle.from_folder(ALGORITHMS / name)) == []
