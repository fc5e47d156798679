"""A PostgreSQL table registered partition by partition (`opal dataset register
NAME postgresql://…/DB/TABLE --parts N`): streamed through a server-side cursor
into a partitioned snapshot bucketed like `opal dataset partition`, versioned
over every partition, refreshed the same way, and run by fan-out like a
partitioned file dataset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest

from benchmarks.scenario import build
from opal.bundle.registry import Bundle
from opal.data import catalog
from opal.data.partition import MANIFEST, buckets, node_key, read_partitioned
from opal.data.synth import synthesize
from opal.devloop import dataset_domains
from opal.home import Home
from opal.release.bounding import combine
from opal.release.domains import resolve
from opal.release.gate import partial_aggregate
from opal.runs import request_run
from opal.runs.dispatch import dispatch, wait
from opal.sandbox import Runtime
from opal.sandbox.pseudonyms import run_pseudonymised
from opal.trust.review import approve, submit
from opal.worker import state
from opal.worker.fanout import partials
from tests.conftest import Opal
from tests.worker.test_partitioned_runs import _MANIFEST, _SOURCE, REGION_COUNT
from tests.worker.workerkit import Workers

PARTS = 4
TABLE = "calls"
_COLUMNS = ["msisdn", "timestamp", "day", "cell_id", "region", "event", "duration_s"]


def _load_table(url: str, data: Path, table: str = TABLE) -> None:
    df = pq.read_table(data).to_pandas()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (msisdn BIGINT, timestamp TIMESTAMPTZ, day INTEGER, cell_id INTEGER, "
            "region TEXT, event TEXT, duration_s INTEGER)"
        )
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            for row in df.itertuples(index=False):
                copy.write_row((int(row.msisdn), row.timestamp.to_pydatetime(), int(row.day), int(row.cell_id),
                                str(row.region), str(row.event), int(row.duration_s)))


def _table_frame(url: str, table: str = TABLE) -> pd.DataFrame:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM {table}").fetchall()
    return pd.DataFrame(rows, columns=_COLUMNS)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[_COLUMNS].copy()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame.sort_values(_COLUMNS).reset_index(drop=True)


@pytest.fixture(scope="module")
def cdr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pgparts") / "cdr.parquet"
    synthesize(out, subscribers=300, days=2, seed=5)
    return out


@pytest.fixture
def table_url(pg_url: str, cdr: Path) -> str:
    _load_table(pg_url, cdr)
    return f"{pg_url}/{TABLE}"


@pytest.fixture
def operator(opal: Opal) -> Opal:
    opal("keys", "new", "olga", "--role", "operator", check=True)
    return opal


def _register(opal: Opal, name: str, url: str, *extra: str) -> dict[str, Any]:
    out = opal.json("dataset", "register", name, url, *extra)
    assert isinstance(out, dict)
    return out


def test_a_table_registered_with_parts_is_a_partitioned_snapshot_whose_union_is_the_table(
        operator: Opal, table_url: str, pg_url: str) -> None:
    shown = _register(operator, "pgparts", table_url, "--parts", str(PARTS))
    folder = Path(shown["path"])
    assert folder.is_dir() and folder.parent == operator.home / "data" / "pgparts"
    assert folder.name == shown["version"]
    assert shown["parts"] == PARTS and shown["source"] == table_url
    parted = read_partitioned(folder)
    assert parted.parts == PARTS and parted.unit == "msisdn"
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST] + [f"part={p}" for p in range(PARTS)]
    table = _table_frame(pg_url)
    assert shown["rows"] == len(table) == sum(parted.rows)
    frames = [pq.read_table(f).to_pandas() for f in parted.files]
    assert [len(f) for f in frames] == list(parted.rows)
    assert all(len(f) > 0 for f in frames)
    # the union of the partitions is the table, row for row
    pd.testing.assert_frame_equal(_sorted(pd.concat(frames)), _sorted(table))
    # each unit lives in exactly one partition, with all its rows
    units = [set(f["msisdn"].tolist()) for f in frames]
    assert sum(len(u) for u in units) == len(set().union(*units)) == table["msisdn"].nunique()
    per_unit = pd.concat(frames).groupby("msisdn").size()
    pd.testing.assert_series_equal(per_unit, table.groupby("msisdn").size())
    # bucketed exactly as `opal dataset partition` buckets: the node's keyed unit hash
    key = node_key(Home.resolve(operator.home))
    for part, frame in enumerate(frames):
        assert set(buckets(frame["msisdn"].to_numpy(), key=key, parts=PARTS).tolist()) == {part}
    ledger = operator.json("ledger", "show", "--type", "dataset_registered")
    assert isinstance(ledger, list)
    assert [e["body"]["parts"] for e in ledger] == [PARTS]


def test_the_version_covers_every_partition_and_follows_the_content(
        operator: Opal, table_url: str, pg_url: str) -> None:
    first = _register(operator, "pga", table_url, "--parts", str(PARTS))
    second = _register(operator, "pgb", table_url, "--parts", str(PARTS))
    # same content: byte-identical partitions, the same version, one budget
    assert second["version"] == first["version"]
    a, b = read_partitioned(Path(first["path"])), read_partitioned(Path(second["path"]))
    assert [f.read_bytes() for f in a.files] == [f.read_bytes() for f in b.files]
    assert second["budget"]["shared_with"] == ["pga"]
    # a plain snapshot of the same table is another set of bytes: another version
    plain = _register(operator, "pgplain", table_url)
    assert Path(plain["path"]).is_file() and plain["version"] != first["version"]
    # unchanged table: refresh keeps the version and the directory
    again = operator.json("dataset", "refresh", "pga")
    assert isinstance(again, dict)
    assert again["changed"] is False and again["version"] == first["version"] and again["path"] == first["path"]
    # one changed value: a new version, still in PARTS partitions
    with psycopg.connect(pg_url, autocommit=True) as conn:
        msisdn = conn.execute(f"SELECT msisdn FROM {TABLE} ORDER BY msisdn LIMIT 1").fetchone()[0]  # type: ignore[index]
        conn.execute(f"UPDATE {TABLE} SET duration_s = duration_s + 1 WHERE msisdn = %s", (msisdn,))
    newer = operator.json("dataset", "refresh", "pga")
    assert isinstance(newer, dict)
    assert newer["changed"] is True and newer["version"] != first["version"]
    assert newer["parts"] == PARTS and newer["rows"] == first["rows"]
    changed = read_partitioned(Path(newer["path"]))
    differing = [p for p in range(PARTS) if changed.files[p].read_bytes() != a.files[p].read_bytes()]
    assert len(differing) == 1        # the updated unit's partition, and only it
    assert Path(first["path"]).is_dir()   # the old snapshot stays for runs that hold it
    updates = operator.json("ledger", "show", "--type", "dataset_updated")
    assert isinstance(updates, list)
    assert [(u["body"]["previous_version"], u["body"]["version"]) for u in updates] == [
        (first["version"], newer["version"])]


def _one_line_refusal(opal: Opal, *args: str) -> str:
    proc = opal(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and proc.stderr.startswith("opal: error: ")
    return proc.stderr.strip()


def test_a_missing_table_or_column_or_parts_out_of_range_registers_nothing(
        operator: Opal, table_url: str, pg_url: str, cdr: Path) -> None:
    base = table_url.rsplit("/", 1)[0]
    assert _one_line_refusal(operator, "dataset", "register", "x", f"{base}/nosuch", "--parts", "4") == (
        f"opal: error: cannot read table nosuch at {base}/nosuch: UndefinedTable (SQLSTATE 42P01)")
    _load_table(pg_url, cdr, table="noregion")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE noregion DROP COLUMN region")
    assert "does not match schema 'cdr': missing column(s) region" in _one_line_refusal(
        operator, "dataset", "register", "x", f"{base}/noregion", "--parts", "4")
    for parts in ("0", "-1", "4097"):
        assert _one_line_refusal(operator, "dataset", "register", "x", table_url, "--parts", parts) == (
            f"opal: error: --parts must be a whole number from 1 to 4096, found {parts}")
    assert "--parts applies to a PostgreSQL table" in _one_line_refusal(
        operator, "dataset", "register", "x", str(cdr), "--parts", "4")
    assert operator.json("dataset", "list") == []
    assert not (operator.home / "data" / "x").exists()
    assert operator.json("ledger", "show", "--type", "dataset_registered") == []


# -- a real worker run -----------------------------------------------------------


@pytest.fixture
def pg_scenario(tmp_path: Path, broker_url: str, pg_url: str,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    monkeypatch.setenv("OPAL_BROKER_URL", broker_url)
    monkeypatch.setenv("OPAL_RECOVERY_INTERVAL", "0")
    sc = build(tmp_path / "home", subscribers=500, days=2)
    _load_table(pg_url, sc.data)
    node, olga = sc.node, sc.node.keyring.signer("olga")
    domains = sc.data.parent / "cdr.domains.toml"
    catalog.register(node, "pg_one", f"{pg_url}/{TABLE}", domains=domains, signer=olga)
    catalog.register(node, "pg_parts", f"{pg_url}/{TABLE}", domains=domains, signer=olga, parts=PARTS)
    bundle_dir = node.home.root / "bundles" / REGION_COUNT
    bundle_dir.mkdir(parents=True)
    (bundle_dir / "opal.toml").write_text(_MANIFEST)
    (bundle_dir / "algorithm.py").write_text(_SOURCE)
    bundle = Bundle.from_folder(bundle_dir)
    submit(node, bundle, signer=node.keyring.signer("sam"))
    for reviewer in ("rita", "ravi"):
        approve(node, bundle.digest, signer=node.keyring.signer(reviewer))
    yield sc, pg_url
    state.close_runtimes()


def _pre_noise_units(ds: catalog.Dataset, bundle: Bundle) -> np.ndarray:
    """The pre-noise aggregate of region_count on ``ds``'s file(s), through the
    sandbox and the gate's first half (region_count's bound selects nothing at random)."""
    privacy = bundle.manifest.privacy
    domains = resolve(privacy.groups, ds.domains)
    aggs = []
    for file in ds.partition_files():
        with Runtime(tables={"cdr": file}) as runtime:
            contributions, units = run_pseudonymised(
                runtime, table="cdr", column="msisdn", source=bundle.source,
                entrypoint=bundle.manifest.entrypoint, params={})
        aggs.append(partial_aggregate(contributions, privacy=privacy, domains=domains, known_units=units))
    return combine(aggs).units


def test_a_worker_run_on_the_partitioned_table_adds_up_to_the_unpartitioned_snapshot(
        pg_scenario: tuple[Any, str], broker_url: str) -> None:
    sc, pg_url = pg_scenario
    node = sc.node
    one, parted = catalog.get(node, "pg_one"), catalog.get(node, "pg_parts")
    assert not one.partitioned and parted.partitioned and len(parted.partition_files()) == PARTS
    assert dataset_domains(sc.data) == parted.domains == one.domains
    workers = Workers(home=node.home.root, broker_url=broker_url, extra_env={"OPAL_RECOVERY_INTERVAL": "0"})
    runs: dict[str, str] = {}
    try:
        for name in ("pg_parts", "pg_one"):
            workers.start(name, concurrency=2)
            record = request_run(node, algorithm=REGION_COUNT, dataset=name, params={}, epsilon=1.0,
                                 signer=node.keyring.signer("sam"))
            dispatch(node, record)
            runs[name] = record.run_id
        done = {name: wait(node, run_id, timeout=240) for name, run_id in runs.items()}
    finally:
        workers.stop_all()
    assert {n: r.state for n, r in done.items()} == {"pg_parts": "released", "pg_one": "released"}, (
        {n: r.error for n, r in done.items()})
    # the worker start re-snapshotted both the same way: no new version
    assert node.ledger.entries(type="dataset_updated") == []
    assert catalog.get(node, "pg_parts").version == parted.version
    # fanned out: one stored partial per partition, all of them ok
    got = partials(node, runs["pg_parts"])
    assert sorted(got) == list(range(PARTS))
    assert all(outcome == {"outcome": "ok"} for _, outcome in got.values())
    combined = combine([got[p][0] for p in range(PARTS)])
    # exact: the pre-noise aggregate of the partitioned run is the unpartitioned snapshot's, cell for cell
    bundle = Bundle.from_folder(node.home.root / "bundles" / REGION_COUNT)
    reference = _pre_noise_units(one, bundle)
    np.testing.assert_array_equal(combined.units, reference)
    truth = pd.read_parquet(one.path).groupby("region")["msisdn"].nunique()
    assert dict(zip(one.domains["region"], combined.units.tolist(), strict=True)) == {
        r: int(truth.get(r, 0)) for r in one.domains["region"]}
    # the two releases have the same shape and mechanism; each is within its intervals of the truth
    a, b = done["pg_parts"].result, done["pg_one"].result
    assert a["table"]["columns"] == b["table"]["columns"]
    assert [r[0] for r in a["table"]["rows"]] == [r[0] for r in b["table"]["rows"]]
    assert json.dumps(a["mechanism"], sort_keys=True) == json.dumps(b["mechanism"], sort_keys=True)
    for release in (a, b):
        for row in release["table"]["rows"]:
            cell = dict(zip(release["table"]["columns"], row, strict=True))
            if not cell["suppressed"]:
                half = (cell["ci_high"] - cell["ci_low"]) / 2
                assert abs(cell["count"] - int(truth.get(cell["region"], 0))) <= 3 * half + 1, cell


def test_a_node_with_another_partitioning_key_refuses_to_refresh_the_table(
        operator: Opal, table_url: str) -> None:
    """Nodes serving a `--parts` table must share keys/partition.key: with another key the units
    would land in other partitions and every worker start would record a new version."""
    first = _register(operator, "pgk", table_url, "--parts", str(PARTS))
    key_file = operator.home / "keys" / "partition.key"
    key_file.write_text("Another16charKey")
    proc = operator("dataset", "refresh", "pgk")
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "was partitioned with key" in message and "copy keys/partition.key" in message
    assert "Another16charKey" not in message      # keys are named by id, never shown
    shown = operator.json("dataset", "show", "pgk")
    assert isinstance(shown, dict) and shown["version"] == first["version"]
    assert operator.json("ledger", "show", "--type", "dataset_updated") == []
