import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opal.data import CDR_UNIT, REGIONS, Shock, cdr_schema, synthesize
from opal.data.world import NIGHT_END_HOUR, NIGHT_START_HOUR, build_world
from opal.errors import BadInputError

SMALL = {"subscribers": 5_000, "days": 14, "seed": 7}


@pytest.fixture(scope="module")
def shocked(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth") / "cdr.parquet"
    summary = synthesize(out, **SMALL, shock=Shock(day=7, region="Cendra", share=0.4))
    return summary, pd.read_parquet(out)


def _digest_of_rows(path: Path) -> str:
    table = pq.read_table(path)
    h = hashlib.sha256()
    for column in table.columns:
        for chunk in column.chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(buf.to_pybytes())
    return h.hexdigest()


def _night(df: pd.DataFrame) -> pd.DataFrame:
    hour = df.timestamp.dt.hour
    return df[(hour >= NIGHT_START_HOUR) | (hour < NIGHT_END_HOUR)]


def _modal_region(df: pd.DataFrame) -> pd.Series:
    counts = df.groupby(["msisdn", "region"]).size().reset_index(name="n")
    counts = counts.sort_values(["msisdn", "n", "region"], ascending=[True, False, True])
    return counts.drop_duplicates("msisdn").set_index("msisdn").region


def test_same_seed_gives_identical_files(tmp_path):
    a = synthesize(tmp_path / "a.parquet", subscribers=500, days=3, seed=3, row_group_size=1000)
    b = synthesize(tmp_path / "b.parquet", subscribers=500, days=3, seed=3, row_group_size=1000)
    assert a.rows == b.rows
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_different_seed_gives_different_data(tmp_path):
    synthesize(tmp_path / "a.parquet", subscribers=500, days=3, seed=1)
    synthesize(tmp_path / "b.parquet", subscribers=500, days=3, seed=2)
    assert _digest_of_rows(tmp_path / "a.parquet") != _digest_of_rows(tmp_path / "b.parquet")


def test_schema_and_dtypes_are_exact(shocked):
    summary, df = shocked
    schema = pq.read_schema(summary.path)
    assert schema.remove_metadata().equals(cdr_schema())
    assert list(df.columns) == ["msisdn", "timestamp", "day", "cell_id", "region", "event", "duration_s"]
    assert cdr_schema().field("timestamp").type == pa.timestamp("us", tz="UTC")
    for name in ("msisdn", "day", "cell_id", "duration_s"):
        assert df[name].dtype == "int64", name
    assert str(df.timestamp.dt.tz) == "UTC"
    assert CDR_UNIT == "msisdn"


def test_values_are_plausible(shocked):
    summary, df = shocked
    assert summary.rows == len(df)
    assert 0.99 * summary.subscribers <= df.msisdn.nunique() <= summary.subscribers
    assert summary.bytes == summary.path.stat().st_size
    # ~5 events per subscriber-day, fewer at weekends.
    assert 0.7 * 5 * 5_000 * 14 < len(df) < 1.1 * 5 * 5_000 * 14
    assert df.msisdn.between(100_000_000, 999_999_999).all()
    assert set(df.event) == {"call", "sms", "data"}
    assert set(df.region) <= {r.name for r in REGIONS}
    assert sorted(df.day.unique()) == list(range(14))
    assert (df.timestamp.dt.normalize() - pd.Timestamp("2024-01-01", tz="UTC")).dt.days.eq(df.day).all()
    assert (df[df.event == "sms"].duration_s == 0).all()
    assert (df[df.event != "sms"].duration_s > 0).all()
    calls = df[df.event == "call"].duration_s
    assert calls.mean() > 1.5 * calls.median()          # heavy tail
    assert df.groupby("cell_id").region.nunique().eq(1).all()  # a cell lies in one region


def test_row_groups_have_the_requested_size(tmp_path):
    out = tmp_path / "cdr.parquet"
    summary = synthesize(out, subscribers=300, days=4, row_group_size=1_000)
    meta = pq.ParquetFile(out).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == summary.rows
    assert all(s == 1_000 for s in sizes[:-1]) and 0 < sizes[-1] <= 1_000


def test_night_events_are_mostly_in_the_home_region(tmp_path):
    out = tmp_path / "cdr.parquet"
    synthesize(out, subscribers=1_000, days=7, seed=11)
    df = pd.read_parquet(out)
    world = build_world(subscribers=1_000, seed=11)
    home = pd.Series([REGIONS[i].name for i in world.home_region], index=world.msisdn)
    night = _night(df)
    at_home = night.region.to_numpy() == home.loc[night.msisdn].to_numpy()
    assert at_home.mean() > 0.9
    modal = _modal_region(night)
    assert (modal == home.loc[modal.index]).mean() > 0.97


def test_shock_truth_matches_the_data(shocked):
    summary, df = shocked
    truth = json.loads(summary.ground_truth_path.read_text())
    assert summary.ground_truth_path == summary.path.with_name("cdr.parquet.truth.json")
    assert truth["shock"] == {"day": 7, "region": "Cendra", "share": 0.4}
    assert sum(truth["destinations"].values()) == truth["moved"]
    assert truth["moved"] == round(0.4 * truth["residents"])
    assert "Cendra" not in truth["destinations"]
    world = build_world(subscribers=SMALL["subscribers"], seed=SMALL["seed"])
    assert truth["residents"] == int((world.home_region == 2).sum())

    # Recover the shock from the data alone: residents by modal night region
    # before the shock, movers by modal night region after it, among
    # subscribers with enough night events in both windows to tell.
    night = _night(df)
    before, after = night[night.day < 7], night[night.day >= 7]
    enough = before.msisdn.value_counts().ge(3) & after.msisdn.value_counts().ge(3)
    enough = enough[enough].index
    home_before = _modal_region(before[before.msisdn.isin(enough)])
    home_after = _modal_region(after[after.msisdn.isin(enough)])
    residents = home_before[home_before == "Cendra"].index
    assert len(residents) > 0.5 * truth["residents"]
    moved = home_after.loc[residents][home_after.loc[residents] != "Cendra"]
    assert abs(len(moved) / len(residents) - truth["moved_share"]) < 0.05
    top = sorted(truth["destinations"], key=truth["destinations"].get, reverse=True)[:2]
    assert list(moved.value_counts().index[:2]) == top


def test_shock_moves_no_one_before_its_day(shocked):
    summary, df = shocked
    world = build_world(subscribers=SMALL["subscribers"], seed=SMALL["seed"])
    residents = world.msisdn[world.home_region == 2]
    night = _night(df)
    night = night[night.msisdn.isin(residents)]
    at_home = night.region.eq("Cendra").groupby(night.day).mean()
    assert (at_home.loc[:6] > 0.9).all()
    # From the shock day on, about 40% of them sleep elsewhere.
    assert (at_home.loc[7:] < 0.9 * (1 - 0.4) + 0.1).all()
    assert (at_home.loc[7:] > 0.9 * (1 - 0.4) - 0.1).all()


def test_no_shock_writes_no_truth_and_removes_a_stale_one(tmp_path):
    out = tmp_path / "cdr.parquet"
    stale = tmp_path / "cdr.parquet.truth.json"
    stale.write_text("{}")
    summary = synthesize(out, subscribers=100, days=2)
    assert summary.ground_truth_path is None
    assert not stale.exists()


def test_progress_reports_every_day(tmp_path):
    seen: list[tuple[int, int]] = []
    synthesize(tmp_path / "cdr.parquet", subscribers=100, days=3,
               progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"subscribers": 0}, "subscribers must be an integer between 1 and"),
        ({"subscribers": -5}, "got -5"),
        ({"days": 0}, "days must be an integer between 1 and"),
        ({"days": 2.5}, "got 2.5"),
        ({"seed": -1}, "seed must be"),
        ({"events_per_day": 0}, "events_per_day"),
        ({"row_group_size": 0}, "row_group_size"),
        ({"shock": Shock(day=1, region="Atlantis", share=0.5)}, "unknown shock region 'Atlantis'"),
        ({"shock": Shock(day=14, region="Amara", share=0.5)}, "between 0 and 13"),
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path, kwargs, fragment):
    out = tmp_path / "cdr.parquet"
    args = {"subscribers": 100, "days": 14, **kwargs}
    with pytest.raises(BadInputError, match=fragment):
        synthesize(out, **args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("share", "day"), [(1.5, 1), (-0.1, 1), (0.5, -1)])
def test_bad_shock_is_refused(share, day):
    with pytest.raises(BadInputError) as err:
        Shock(day=day, region="Amara", share=share)
    assert err.value.exit_code == 2
    assert "got" in str(err.value)


def test_default_size_is_fast(tmp_path):
    import time

    start = time.perf_counter()
    summary = synthesize(tmp_path / "cdr.parquet")
    assert summary.subscribers == 20_000 and summary.days == 14
    assert time.perf_counter() - start < 15


def test_unwritable_output_is_bad_input(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BadInputError, match="cannot create the folder"):
        synthesize(blocker / "sub" / "cdr.parquet", subscribers=10, days=1)
    with pytest.raises(BadInputError, match="is a directory"):
        synthesize(tmp_path, subscribers=10, days=1)
