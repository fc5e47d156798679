"""Datasets from Parquet, CSV and PostgreSQL: schema checks, versions, refresh."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from opal.data import catalog
from opal.errors import BadInputError
from opal.node import Node
from tests.conftest import Opal

PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def cdr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from opal.data.synth import synthesize

    out = tmp_path_factory.mktemp("cdr") / "cdr.parquet"
    synthesize(out, subscribers=200, days=2, seed=4)
    return out


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node.open(tmp_path / "home")
    n.keyring.new("olga", "operator", n.ledger)
    return n


def test_columns_not_matching_the_schema_are_refused_at_registration(opal: Opal, cdr: Path, tmp_path: Path) -> None:
    opal("keys", "new", "olga", "--role", "operator", check=True)
    table = pq.read_table(cdr)
    missing = tmp_path / "no_region.parquet"
    pq.write_table(table.drop(["region"]), missing)
    proc = opal("dataset", "register", "bad", str(missing), "--schema", "cdr")
    assert proc.returncode == 2
    assert "does not match schema 'cdr': missing column(s) region" in proc.stderr
    wrong = tmp_path / "wrong_type.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("day"), "day",
                                    table.column("day").cast("string")), wrong)
    proc = opal("dataset", "register", "bad", str(wrong), "--schema", "cdr")
    assert proc.returncode == 2 and "column day has type string, expected int" in proc.stderr
    assert opal.json("dataset", "list") == []


def test_csv_registers_and_lists_with_rows_and_version(opal: Opal, cdr: Path, tmp_path: Path) -> None:
    import pyarrow.csv as pcsv

    opal("keys", "new", "olga", "--role", "operator", check=True)
    csv = tmp_path / "cdr.csv"
    pcsv.write_csv(pq.read_table(cdr), csv)
    shown = opal.json("dataset", "register", "calls", str(csv), "--schema", "cdr")
    assert shown["rows"] == pq.ParquetFile(cdr).metadata.num_rows
    assert len(shown["version"]) == 64 and shown["source"] == str(csv)
    assert [d["name"] for d in opal.json("dataset", "list")] == ["calls"]
    assert opal.json("dataset", "show", "calls")["policy"]["total_epsilon"] == 10


def test_file_refresh_records_a_new_version_only_when_the_bytes_change(node: Node, cdr: Path, tmp_path: Path) -> None:
    data = tmp_path / "live.parquet"
    data.write_bytes(cdr.read_bytes())
    olga = node.keyring.signer("olga")
    first = catalog.register(node, "live", data, signer=olga)
    assert catalog.refresh(node, "live", signer=olga).version == first.version
    table = pq.read_table(cdr)
    pq.write_table(table.slice(0, table.num_rows // 2), data)
    second = catalog.refresh(node, "live", signer=olga)
    assert second.version != first.version and second.rows == table.num_rows // 2
    updates = node.ledger.entries(type="dataset_updated")
    assert [u.body["previous_version"] for u in updates] == [first.version]


@pytest.fixture
def pg_table(cdr: Path) -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"opal_cdr_{uuid.uuid4().hex[:8]}"
    try:
        conn = psycopg.connect(PG, autocommit=True, connect_timeout=3)
    except psycopg.Error:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    df = pq.read_table(cdr).to_pandas()
    with conn:
        conn.execute(
            f"CREATE TABLE {name} (msisdn BIGINT, timestamp TIMESTAMPTZ, day INTEGER, cell_id INTEGER, "
            "region TEXT, event TEXT, duration_s INTEGER)"
        )
        with conn.cursor().copy(f"COPY {name} FROM STDIN") as copy:
            for row in df.itertuples(index=False):
                copy.write_row((int(row.msisdn), row.timestamp.to_pydatetime(), int(row.day), int(row.cell_id),
                                str(row.region), str(row.event), int(row.duration_s)))
        yield name
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def test_postgresql_table_is_snapshotted_fingerprinted_and_refreshed(node: Node, pg_table: str, cdr: Path) -> None:
    olga = node.keyring.signer("olga")
    url = f"{PG}/{pg_table}".replace("postgres@", "postgres:secret@")
    ds = catalog.register(node, "pgcdr", url, signer=olga)
    expected = pq.ParquetFile(cdr).metadata.num_rows
    assert ds.rows == expected
    assert ds.path.is_file() and ds.path.is_relative_to(node.home.root / "data" / "pgcdr")
    assert ds.path.name == f"{ds.version}.parquet"
    assert "secret" not in json.dumps(ds.to_dict()) and "secret" not in json.dumps(
        [e.body for e in node.ledger.entries(type="dataset_registered")])
    assert ds.to_dict()["source"] == f"{PG}/{pg_table}"
    snap = pq.read_table(ds.path)
    assert snap.num_rows == expected and set(snap.column_names) == set(catalog.SCHEMAS["cdr"].columns)
    # unchanged table: same bytes, same version
    assert catalog.refresh(node, "pgcdr", signer=olga).version == ds.version
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {pg_table} WHERE day = 1")
    newer = catalog.refresh(node, "pgcdr", signer=olga)
    assert newer.version != ds.version and newer.rows < expected
    assert catalog.get(node, "pgcdr").path == newer.path


def test_postgresql_table_with_wrong_columns_is_refused(node: Node, pg_table: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {pg_table} DROP COLUMN region")
    with pytest.raises(BadInputError, match="missing column"):
        catalog.register(node, "pgbad", f"{PG}/{pg_table}", signer=node.keyring.signer("olga"))
    with pytest.raises(BadInputError, match="does not name a table"):
        catalog.register(node, "pgbad", PG, signer=node.keyring.signer("olga"))
    assert catalog.list_datasets(node) == []


def test_a_failing_postgresql_read_names_no_value(node: Node, pg_table: str) -> None:
    """A server error about the rows (here a cast of a planted value) quotes that
    value; the refusal must name only the error class and SQLSTATE."""
    import psycopg

    view = f"{pg_table}_v"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(
            f"CREATE VIEW {view} AS SELECT msisdn, timestamp, day, region::integer AS cell_id, region, event, "
            f"duration_s FROM {pg_table}"
        )
    try:
        with pytest.raises(BadInputError) as caught:
            catalog.register(node, "pgview", f"{PG}/{view}", signer=node.keyring.signer("olga"))
        with psycopg.connect(PG) as conn:
            values = {r[0] for r in conn.execute(f"SELECT DISTINCT region FROM {pg_table}")}
        assert "SQLSTATE 22P02" in caught.value.message
        assert not [v for v in values if v in caught.value.message]     # whichever row failed first
        assert not [v for v in values if v in json.dumps([e.body for e in node.ledger.entries()])]
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP VIEW IF EXISTS {view}")


def test_a_csv_dataset_runs_end_to_end_through_a_worker(tmp_path: Path, broker_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A CSV once registered fine and then failed every run (the sandbox read only Parquet).
    import pyarrow.csv as pcsv

    from benchmarks.scenario import build
    from opal.runs import request_run
    from opal.runs.dispatch import dispatch, wait
    from tests.worker.workerkit import Workers

    monkeypatch.setenv("OPAL_BROKER_URL", broker_url)
    sc = build(tmp_path / "home", subscribers=300, days=1)
    csv = sc.data.with_suffix(".csv")                         # beside the Parquet: same domains sidecar
    pcsv.write_csv(pq.read_table(sc.data), csv)
    catalog.register(sc.node, "calls", csv, schema="cdr", signer=sc.node.keyring.signer("olga"))
    workers = Workers(home=sc.node.home.root, broker_url=broker_url)
    try:
        workers.start("calls")
        record = request_run(sc.node, algorithm="spin_count", dataset="calls", params={"tag": 1}, epsilon=1.0,
                             signer=sc.node.keyring.signer("sam"))
        dispatch(sc.node, record)
        done = wait(sc.node, record.run_id, timeout=120)
    finally:
        workers.stop_all()
    assert done.state == "released"
    decisions = sc.node.db.one("SELECT record FROM run_decisions WHERE run_id = ?", (record.run_id,))
    assert json.loads(decisions["record"])["run_outcome"]["outcome"] == "ok"   # the algorithm ran on the rows
    frame = pq.read_table(sc.data).to_pandas()
    truth = frame[["msisdn", "region"]].drop_duplicates().groupby("region").size()
    table = done.result["table"]
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    # Each subscriber counts in one of its regions (max_groups_per_unit = 1), so a
    # released count is at most its region's distinct subscribers, and all the
    # counts add up to the 300 subscribers (up to noise; a suppressed cell holds
    # at most its region's subscribers).
    slack = 8 * max(row["noise_scale"] for row in rows)
    for row in rows:
        if not row["suppressed"]:
            assert row["count"] <= truth[row["region"]] + slack, row
    total = sum(row["count"] if not row["suppressed"] else truth[row["region"]] for row in rows)
    assert abs(total - 300) <= slack * len(rows) ** 0.5 + sum(truth[r["region"]] for r in rows if r["suppressed"])
