"""Partitioned datasets: opal dataset partition / synth --parts / register a directory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from opal.data import catalog
from opal.data.partition import MANIFEST, node_key, partition, partition_file, read_partitioned
from opal.data.synth import synthesize
from opal.errors import BadInputError
from opal.node import Node
from tests.conftest import Opal

KEY = "k" * 16
OTHER_KEY = "z" * 16


@pytest.fixture
def cdr(tmp_path: Path) -> Path:
    out = tmp_path / "cdr.parquet"
    synthesize(out, subscribers=700, days=3, seed=5)
    return out


def _parts(folder: Path) -> list[pd.DataFrame]:
    return [pd.read_parquet(f) for f in read_partitioned(folder).files]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_each_unit_lands_in_exactly_one_partition_and_rows_add_up(cdr: Path, tmp_path: Path) -> None:
    parted = partition(cdr, tmp_path / "parts", parts=5, key=KEY, unit="msisdn")
    frames = _parts(tmp_path / "parts")
    whole = pd.read_parquet(cdr)
    assert [len(f) for f in frames] == list(parted.rows)
    assert sum(parted.rows) == len(whole)
    units = [set(f.msisdn) for f in frames]
    assert sum(len(u) for u in units) == whole.msisdn.nunique()          # no unit in two partitions
    assert set().union(*units) == set(whole.msisdn)
    pd.testing.assert_frame_equal(_sorted(pd.concat(frames)), _sorted(whole))  # the very same rows
    assert all(len(u) > 0 for u in units)


def test_synth_with_parts_writes_the_rows_of_partitioning_the_file(cdr: Path, tmp_path: Path) -> None:
    partition(cdr, tmp_path / "from_file", parts=3, key=KEY, unit="msisdn")
    summary = synthesize(tmp_path / "direct", subscribers=700, days=3, seed=5, parts=3, key=KEY)
    assert summary.rows == pq.ParquetFile(cdr).metadata.num_rows
    assert summary.domains_path == tmp_path / "direct.domains.toml"
    for a, b in zip(_parts(tmp_path / "from_file"), _parts(tmp_path / "direct"), strict=True):
        pd.testing.assert_frame_equal(_sorted(a), _sorted(b))


def test_the_partition_of_a_unit_depends_on_the_operator_key(cdr: Path, tmp_path: Path) -> None:
    # a requester who knows an identifier cannot tell which partition holds it without the key
    partition(cdr, tmp_path / "a", parts=4, key=KEY, unit="msisdn")
    partition(cdr, tmp_path / "b", parts=4, key=OTHER_KEY, unit="msisdn")
    where_a = {u: p for p, f in enumerate(_parts(tmp_path / "a")) for u in set(f.msisdn)}
    where_b = {u: p for p, f in enumerate(_parts(tmp_path / "b")) for u in set(f.msisdn)}
    moved = sum(where_a[u] != where_b[u] for u in where_a)
    assert moved > len(where_a) / 2          # about 3/4 move for 4 parts
    assert read_partitioned(tmp_path / "a").key_id != read_partitioned(tmp_path / "b").key_id


def test_the_node_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    node = Node.open(tmp_path / "home")
    key = node_key(node.home)
    assert node_key(node.home) == key and len(key) == 16
    assert (node.home.keys_dir / "partition.key").stat().st_mode & 0o077 == 0


def test_registered_version_covers_every_partition(cdr: Path, tmp_path: Path) -> None:
    from benchmarks.scenario import build

    sc = build(tmp_path / "home", subscribers=50, days=1)
    folder = tmp_path / "parts"
    partition(cdr, folder, parts=4, key=KEY, unit="msisdn")
    signer = sc.node.keyring.signer("olga")
    ds = catalog.register(sc.node, "parted", folder, signer=signer)
    assert ds.partitioned and ds.rows == pq.ParquetFile(cdr).metadata.num_rows
    assert ds.partition_files() == tuple(partition_file(folder, p) for p in range(4))
    # one partition loses one row: a new version, and the rows follow
    last = partition_file(folder, 3)
    table = pq.read_table(last)
    pq.write_table(table.slice(1), last)
    newer = catalog.refresh(sc.node, "parted", signer=signer)
    assert newer.version != ds.version
    assert newer.rows == ds.rows - 1


def test_a_directory_missing_a_partition_is_refused(cdr: Path, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    partition(cdr, folder, parts=3, key=KEY, unit="msisdn")
    partition_file(folder, 1).unlink()
    with pytest.raises(BadInputError, match="part=1/part-0.parquet missing"):
        read_partitioned(folder)
    (folder / MANIFEST).unlink()
    with pytest.raises(BadInputError, match="opal dataset partition"):
        read_partitioned(folder)


def test_partition_cli_writes_the_directory_and_its_domains(opal: Opal, tmp_path: Path) -> None:
    data = tmp_path / "cdr.parquet"
    opal("dataset", "synth", str(data), "--subscribers", "200", "--days", "1", check=True)
    doc = opal.json("dataset", "partition", str(data), str(tmp_path / "parts"), "--parts", "3")
    assert doc["parts"] == 3 and doc["rows"] == pq.ParquetFile(data).metadata.num_rows  # type: ignore[index]
    assert (tmp_path / "parts.domains.toml").read_text() == (tmp_path / "cdr.domains.toml").read_text()


@pytest.mark.parametrize("parts, words", [("0", "--parts must be a whole number from 1 to 4096"),
                                          ("5000", "--parts must be a whole number from 1 to 4096")])
def test_partition_cli_refuses_bad_parts_in_one_line(opal: Opal, tmp_path: Path, parts: str, words: str) -> None:
    data = tmp_path / "cdr.parquet"
    opal("dataset", "synth", str(data), "--subscribers", "50", "--days", "1", check=True)
    proc = opal("dataset", "partition", str(data), str(tmp_path / "parts"), "--parts", parts)
    assert proc.returncode == 2
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "parts").exists()


def test_a_directory_where_a_unit_is_in_two_partitions_is_refused(cdr: Path, tmp_path: Path) -> None:
    # per-unit bounding runs per partition: a unit in two partitions would count twice its bound
    from benchmarks.scenario import build

    sc = build(tmp_path / "home", subscribers=50, days=1)
    folder = tmp_path / "parts"
    partition(cdr, folder, parts=3, key=KEY, unit="msisdn")
    first, second = partition_file(folder, 0), partition_file(folder, 1)
    moved = pq.read_table(first).slice(0, 1)
    pq.write_table(pa_concat(pq.read_table(second), moved), second)
    with pytest.raises(BadInputError, match="more than one partition") as refused:
        catalog.register(sc.node, "parted", folder, signer=sc.node.keyring.signer("olga"))
    assert str(moved.column("msisdn")[0]) not in str(refused.value)


def test_a_refresh_checks_units_again_only_when_the_bytes_changed(
        cdr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker refreshes its dataset at every start: reading every unit column again
    # for bytes checked at registration cost 7.5 s at 100 M rows.
    from benchmarks.scenario import build
    from opal.data.partition import Partitioned

    sc = build(tmp_path / "home", subscribers=50, days=1)
    signer = sc.node.keyring.signer("olga")
    folder = tmp_path / "parts"
    partition(cdr, folder, parts=3, key=KEY, unit="msisdn")
    checks: list[Path] = []
    real = Partitioned.check_disjoint

    def counted(self: Partitioned) -> None:
        checks.append(self.path)
        real(self)

    monkeypatch.setattr(Partitioned, "check_disjoint", counted)
    ds = catalog.register(sc.node, "parted", folder, signer=signer)
    assert len(checks) == 1
    assert catalog.refresh(sc.node, "parted", signer=signer).version == ds.version
    assert len(checks) == 1  # the same bytes: checked at registration
    # a unit copied into a second partition changes the bytes: checked, refused, version kept
    first, second = partition_file(folder, 0), partition_file(folder, 1)
    pq.write_table(pa_concat(pq.read_table(second), pq.read_table(first).slice(0, 1)), second)
    with pytest.raises(BadInputError, match="more than one partition"):
        catalog.refresh(sc.node, "parted", signer=signer)
    assert len(checks) == 2
    assert catalog.get(sc.node, "parted").version == ds.version


def test_an_operator_who_edits_the_recorded_version_does_not_skip_the_check(cdr: Path, tmp_path: Path) -> None:
    # Attack: copy a unit into a second partition (it would count twice its bound), then
    # write the new directory's version into the datasets row so a refresh takes it as checked.
    from benchmarks.scenario import build

    sc = build(tmp_path / "home", subscribers=50, days=1)
    signer = sc.node.keyring.signer("olga")
    folder = tmp_path / "parts"
    partition(cdr, folder, parts=3, key=KEY, unit="msisdn")
    ds = catalog.register(sc.node, "parted", folder, signer=signer)
    first, second = partition_file(folder, 0), partition_file(folder, 1)
    pq.write_table(pa_concat(pq.read_table(second), pq.read_table(first).slice(0, 1)), second)
    forged = read_partitioned(folder).version()
    with sc.node.db.transaction() as tx:
        tx.execute("UPDATE datasets SET fingerprint = ? WHERE name = ?", (forged, "parted"))
    with pytest.raises(BadInputError, match="more than one partition"):
        catalog.refresh(sc.node, "parted", signer=signer)
    assert sc.node.ledger.entries(type="dataset_updated", subject="parted") == []
    assert ds.version != forged


def pa_concat(a, b):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.concat_tables([a, b])


def test_a_csv_input_is_partitioned_like_its_parquet(cdr: Path, tmp_path: Path) -> None:
    import pyarrow.csv as pcsv

    csv = tmp_path / "cdr.csv"
    pcsv.write_csv(pq.read_table(cdr), csv)
    partition(cdr, tmp_path / "from_parquet", parts=3, key=KEY, unit="msisdn")
    partition(csv, tmp_path / "from_csv", parts=3, key=KEY, unit="msisdn")
    for a, b in zip(_parts(tmp_path / "from_parquet"), _parts(tmp_path / "from_csv"), strict=True):
        assert set(a.msisdn) == set(b.msisdn) and len(a) == len(b)


def test_synth_parts_then_register_the_directory_through_the_cli(opal: Opal, tmp_path: Path) -> None:
    opal("keys", "new", "olga", "--role", "operator", check=True)
    parts = tmp_path / "parts"
    made = opal.json("dataset", "synth", str(parts), "--parts", "3", "--subscribers", "300", "--days", "2")
    shown = opal.json("dataset", "register", "cdr_parts", str(parts), "--key", "olga")
    assert shown["parts"] == 3 and shown["rows"] == made["rows"]  # type: ignore[index]
    assert shown["domains"]["region"]                               # type: ignore[index]  # the parts.domains.toml sidecar
    again = opal("dataset", "synth", str(parts), "--parts", "3")
    assert again.returncode == 2 and "exists already" in again.stderr
