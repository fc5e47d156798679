"""Registered datasets: where the data is, its schema, its version, its policy.

A dataset is a Parquet or CSV file (read through pyarrow), a partitioned
Parquet directory (``opal.data.partition``: version = SHA-256 over every
partition file's SHA-256), or a PostgreSQL
table (``postgresql://HOST/DB/TABLE`` or ``…/DB?table=TABLE``). A table is
materialised to a Parquet snapshot under ``OPAL_HOME/data/NAME/`` at
registration and again by ``refresh`` (every worker start); the sandbox reads
the snapshot. Registered with ``parts``, a table is streamed into a
partitioned snapshot directory instead, bucketed like ``opal dataset
partition`` (``snapshot_table_partitioned``). The version is the SHA-256 of the file (or snapshot) bytes, so a
change of the data is a new version: workers reload it and identical-run
caching never serves a release computed on other data.

Columns must match the declared schema, or registration is refused.

Each dataset declares the public domains of its group columns (``--domains
FILE``, by default the ``STEM.domains.toml`` sidecar next to a file): the
labels a release over it may carry (``opal.release.domains``). Its privacy
budget belongs to its content (``opal.release.budget``): registering the same
content under another name shares one budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import weakref
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

from opal.canonical import canonical_json, sha256_hex
from opal.db import Database, ensure_tables
from opal.errors import BadInputError
from opal.release import budget
from opal.release.domains import Label, domains_from_dict, domains_to_dict, load_domains, sidecar_for
from opal.release.policy import ReleasePolicy
from opal.trust.keys import utcnow

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.keyring import Signer

__all__ = [
    "SCHEMAS",
    "Dataset",
    "DatasetSchema",
    "default_policy",
    "get",
    "is_table_url",
    "list_datasets",
    "redact_url",
    "refresh",
    "register",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True, kw_only=True)
class DatasetSchema:
    name: str
    unit: str                      # the privacy-unit column
    columns: dict[str, str]        # column -> kind: int | string | timestamp

    def check(self, schema: pa.Schema, *, where: str) -> None:
        import pyarrow as pa

        found = {f.name: f.type for f in schema}
        missing = [c for c in self.columns if c not in found]
        if missing:
            raise BadInputError(
                f"{where} does not match schema {self.name!r}: missing column(s) {', '.join(missing)}; "
                f"expected {', '.join(self.columns)}"
            )
        for col, kind in self.columns.items():
            t = found[col]
            ok = {
                "int": pa.types.is_integer(t),
                "string": pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t),
                "timestamp": pa.types.is_timestamp(t),
            }[kind]
            if not ok:
                raise BadInputError(
                    f"{where} does not match schema {self.name!r}: column {col} has type {t}, expected {kind}"
                )


SCHEMAS: dict[str, DatasetSchema] = {
    "cdr": DatasetSchema(
        name="cdr",
        unit="msisdn",
        columns={
            "msisdn": "int",
            "timestamp": "timestamp",
            "day": "int",
            "cell_id": "int",
            "region": "string",
            "event": "string",
            "duration_s": "int",
        },
    )
}


@dataclass(frozen=True, kw_only=True)
class Dataset:
    name: str
    path: Path
    schema: str
    rows: int
    fingerprint: str
    policy: ReleasePolicy
    registered: str
    source: str | None = None      # the PostgreSQL table (password removed) a snapshot was taken of
    table_parts: int | None = None  # a table snapshotted partition by partition: into this many parts
    domains: dict[str, tuple[Label, ...]] = field(default_factory=dict)  # public group domains

    @property
    def version(self) -> str:
        return self.fingerprint

    @property
    def unit(self) -> str:
        return SCHEMAS[self.schema].unit

    @property
    def partitioned(self) -> bool:
        return self.path.is_dir()

    def partition_files(self) -> tuple[Path, ...]:
        """The partition files of a partitioned dataset, in partition order (one file otherwise)."""
        if not self.partitioned:
            return (self.path,)
        from opal.data.partition import read_partitioned

        return read_partitioned(self.path).files

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "schema": self.schema,
            "rows": self.rows,
            "version": self.fingerprint,
            "policy": self.policy.to_dict(),
            "registered": self.registered,
            "source": self.source or str(self.path),
            "domains": domains_to_dict(self.domains),
            "parts": len(self.partition_files()) if self.partitioned else None,
        }


def default_policy() -> ReleasePolicy:
    from importlib import resources

    text = resources.files("opal").joinpath("_defaults/release_policy.toml").read_text()
    import tomllib

    return ReleasePolicy.from_dict(tomllib.loads(text))


def fingerprint_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_schema(path: Path) -> tuple[pa.Schema, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise BadInputError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            meta = pq.ParquetFile(path)
            return meta.schema_arrow, meta.metadata.num_rows
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
            return table.schema, table.num_rows
    except (pa.ArrowInvalid, OSError):
        raise BadInputError(f"{path} is not a readable {suffix[1:]} file") from None
    raise BadInputError(f"{path}: unsupported format {suffix!r}; use .parquet or .csv")


def is_table_url(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` without its password (never stored, logged or shown)."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1@", url)


def _check_name_and_schema(name: str, schema: str) -> None:
    if not _NAME.match(name):
        raise BadInputError(f"dataset name {name!r} must be lower-case letters, digits and _")
    if schema not in SCHEMAS:
        raise BadInputError(f"unknown schema {schema!r}; known: {', '.join(SCHEMAS)}")


def _load(
    node: Node, name: str, source: str | Path, schema: str, parts: int | None = None, *, known: str | None = None
) -> tuple[Path, int, str, str | None]:
    """(file or directory the sandbox reads, rows, version, table source or None), schema checked.

    With ``parts``, a table is snapshotted into a partitioned directory.
    ``known`` is the version checked already (a refresh: the one the signed ledger
    recorded): a partitioned directory whose bytes still hash to it is not checked
    for disjoint units again.
    """
    if is_table_url(source):
        where = redact_url(str(source))

        def check(sch: pa.Schema) -> None:
            SCHEMAS[schema].check(sch, where=where)

        if parts is not None:
            from opal.data.partition import node_key

            folder, rows, version = snapshot_table_partitioned(
                str(source), node.home.root / "data" / name, parts=parts, key=node_key(node.home),
                unit=SCHEMAS[schema].unit, check=check,
            )
            return folder, rows, version, where
        path, arrow_schema, rows, version = snapshot_table(str(source), node.home.root / "data" / name, check=check)
        return path, rows, version, where
    if parts is not None:
        raise BadInputError(
            "--parts applies to a PostgreSQL table; partition a file with opal dataset partition IN OUT --parts N "
            "and register the directory"
        )
    path = Path(source).expanduser().absolute()
    if path.is_dir():
        return path, *_load_partitioned(path, schema, known=known), None
    arrow_schema, rows = read_schema(path)
    SCHEMAS[schema].check(arrow_schema, where=str(path))
    return path, rows, fingerprint_file(path), None


def _load_partitioned(path: Path, schema: str, *, known: str | None = None) -> tuple[int, str]:
    """(rows, version) of a partitioned directory, every partition schema-checked,
    its units checked disjoint unless its bytes are the ``known`` version's
    (a worker's start-up refresh: reading every unit column took 7.5 s and left
    ~300 MB in the worker's main process, which its pool processes inherit)."""
    from opal.data.partition import read_partitioned

    parted = read_partitioned(path)
    if parted.unit != SCHEMAS[schema].unit:
        raise BadInputError(
            f"{path} is partitioned by {parted.unit!r}, but schema {schema!r} protects "
            f"{SCHEMAS[schema].unit!r}; partition it by the privacy unit"
        )
    rows = 0
    for file in parted.files:
        arrow_schema, n = read_schema(file)
        SCHEMAS[schema].check(arrow_schema, where=str(file))
        rows += n
    version = parted.version()
    if version != known:
        parted.check_disjoint()
    return rows, version


def register(
    node: Node,
    name: str,
    path: Path | str,
    *,
    schema: str = "cdr",
    policy: ReleasePolicy | None = None,
    domains: dict[str, tuple[Label, ...]] | Path | None = None,
    signer: Signer,
    parts: int | None = None,
) -> Dataset:
    """Register the file, partitioned directory or PostgreSQL table ``path`` as dataset ``name``.

    ``domains`` are the public group domains (a mapping, or a domain file);
    by default the sidecar ``STEM.domains.toml`` next to a file, if present.
    A source whose content is registered already shares that dataset's budget.
    ``parts`` (a table only) snapshots the table into that many partitions,
    bucketed by the node's keyed unit hash; every refresh does the same.

    Raises:
        BadInputError: bad name or schema, unreadable source, columns that do
            not match the schema, a bad domain file, ``parts`` out of range or
            given for a file, or a name registered already.
    """
    _check_name_and_schema(name, schema)
    if parts is not None:
        from opal.data.partition import MAX_PARTS

        if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= MAX_PARTS:
            raise BadInputError(f"--parts must be a whole number from 1 to {MAX_PARTS}, found {parts!r}")
    if node.db.one("SELECT 1 FROM datasets WHERE name = ?", (name,)) is not None:
        raise BadInputError(f"dataset {name!r} is registered already; see opal dataset show {name}")
    declared = _domains_for(path, domains)
    file, rows, version, source = _load(node, name, path, schema, parts)
    policy = policy or default_policy()
    ds = Dataset(
        name=name,
        path=file,
        schema=schema,
        rows=rows,
        fingerprint=version,
        policy=policy,
        registered=utcnow(),
        source=source,
        table_parts=parts,
        domains=declared,
    )
    _ensure_sources(node)
    with node.db.transaction() as tx:
        exists = tx.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone()
        if exists:
            raise BadInputError(f"dataset {name!r} is registered already; see opal dataset show {name}")
        tx.execute(
            "INSERT INTO datasets(name, path, schema, rows, fingerprint, policy, registered) VALUES (?,?,?,?,?,?,?)",
            (name, str(file), schema, rows, ds.fingerprint, json.dumps(policy.to_dict()), ds.registered),
        )
        if source is not None:
            tx.execute("INSERT OR REPLACE INTO dataset_sources(name, source) VALUES (?,?)", (name, source))
        if parts is not None:
            tx.execute("INSERT OR REPLACE INTO dataset_table_parts(name, parts) VALUES (?,?)", (name, parts))
        domains_doc = domains_to_dict(declared)
        tx.execute(
            "INSERT OR REPLACE INTO dataset_domains(name, domains) VALUES (?,?)", (name, json.dumps(domains_doc))
        )
        shares = budget.open_pool(tx, dataset=name, fingerprint=ds.fingerprint, total_epsilon=policy.total_epsilon)
        body: dict[str, Any] = {
            "dataset": name,
            "schema": schema,
            "rows": rows,
            "version": ds.fingerprint,
            "domains_digest": sha256_hex(canonical_json(domains_doc)),
        }
        if source is not None:
            body["source"] = source
        if parts is not None:
            body["parts"] = parts
        if shares is not None:
            body["budget_shared_with"] = shares
        node.ledger.append_in(tx, type="dataset_registered", body=body, signer=signer, subject=name)
        node.ledger.append_in(
            tx,
            type="policy_changed",
            body={"dataset": name, "policy": policy.to_dict()},
            signer=signer,
            subject=name,
        )
    return ds


def refresh(node: Node, name: str, *, signer: Signer) -> Dataset:
    """Re-read the dataset's source; if its bytes changed, record the new version.

    A table is snapshotted again (into as many partitions as at registration,
    if it was registered with ``parts``); a file is hashed again. The columns are
    checked against the schema before a new version is accepted. The budget
    is the dataset's and is unchanged.
    """
    ds = get(node, name)
    source: str | Path = ds.source if ds.source else ds.path
    if ds.table_parts is not None:
        _same_partition_key(node, ds)
    file, rows, version, _ = _load(node, name, source, ds.schema, ds.table_parts, known=_signed_version(node, name))
    if version == ds.fingerprint and file == ds.path:
        return ds
    with node.db.transaction() as tx:
        row = tx.execute("SELECT fingerprint FROM datasets WHERE name = ?", (name,)).fetchone()
        if row is not None and row[0] != version:
            tx.execute(
                "UPDATE datasets SET path = ?, rows = ?, fingerprint = ? WHERE name = ?",
                (str(file), rows, version, name),
            )
            node.ledger.append_in(
                tx,
                type="dataset_updated",
                body={"dataset": name, "rows": rows, "version": version, "previous_version": row[0]},
                signer=signer,
                subject=name,
            )
    return get(node, name)


def _signed_version(node: Node, name: str) -> str | None:
    """The version the signed ledger last recorded for ``name`` (its registration or a
    refresh, each of which checked the data). Not the ``datasets`` row: an operator who
    edits the database alone must not spare a changed directory its checks."""
    latest = [
        entry
        for kind in ("dataset_registered", "dataset_updated")
        for entry in node.ledger.entries(type=kind, subject=name, limit=1, newest=True)
    ]
    if not latest:
        return None
    version = max(latest, key=lambda e: e.index).body.get("version")
    return version if isinstance(version, str) else None


def _same_partition_key(node: Node, ds: Dataset) -> None:
    """A table registered with ``parts`` is re-snapshotted with this node's partitioning key: a
    node with another key would bucket the units otherwise and record a new version at every
    start, in turn with the node that registered it. Refused instead, with the fix."""
    from opal.data.partition import is_partitioned, key_id, node_key, read_partitioned

    if not is_partitioned(ds.path):
        return  # the snapshot is not on this node's storage: nothing to compare with
    held = read_partitioned(ds.path).key_id
    mine = key_id(node_key(node.home))
    if held != mine:
        raise BadInputError(
            f"dataset {ds.name!r} was partitioned with key {held} and this node's "
            f"{node.home.keys_dir / 'partition.key'} is key {mine}; every node serving it must "
            "share one key: copy keys/partition.key from the node that registered it"
        )


_SOURCES_TABLE = "CREATE TABLE IF NOT EXISTS dataset_sources (name TEXT PRIMARY KEY, source TEXT NOT NULL)"
_DOMAINS_TABLE = "CREATE TABLE IF NOT EXISTS dataset_domains (name TEXT PRIMARY KEY, domains TEXT NOT NULL)"
_PARTS_TABLE = "CREATE TABLE IF NOT EXISTS dataset_table_parts (name TEXT PRIMARY KEY, parts INTEGER NOT NULL)"
_sources_ready: weakref.WeakSet[Database] = weakref.WeakSet()


def _ensure_sources(node: Node) -> None:
    ensure_tables(node.db, (_SOURCES_TABLE, _DOMAINS_TABLE, _PARTS_TABLE), _sources_ready)


def _domains_for(
    source: Path | str, domains: dict[str, tuple[Label, ...]] | Path | None
) -> dict[str, tuple[Label, ...]]:
    """The declared domains: given, read from a file, or the source's sidecar."""
    if isinstance(domains, Path):
        return load_domains(domains)
    if domains is not None:
        return dict(domains)
    if not is_table_url(source):
        sidecar = sidecar_for(Path(source).expanduser().absolute())
        if sidecar.is_file():
            return load_domains(sidecar)
    return {}


# -- PostgreSQL tables ---------------------------------------------------------

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_BATCH_ROWS = 100_000


def split_table_url(url: str) -> tuple[str, str]:
    """``postgresql://…/DB/TABLE`` or ``…/DB?table=TABLE`` → (connection URL, table)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    table = next((v for k, v in query if k == "table"), None)
    path = parts.path
    if table is None:
        path, _, table = path.rpartition("/")
    if not table or not _TABLE.match(table) or not path.strip("/"):
        raise BadInputError(
            f"{redact_url(url)} does not name a table; use postgresql://HOST/DATABASE/TABLE "
            "(or postgresql://HOST/DATABASE?table=SCHEMA.TABLE)"
        )
    rest = urlencode([(k, v) for k, v in query if k != "table"])
    return urlunsplit((parts.scheme, parts.netloc, path, rest, "")), table


def _arrow_type(oid: int, column: str, where: str) -> pa.DataType:
    import pyarrow as pa

    types = {
        16: pa.bool_(), 20: pa.int64(), 21: pa.int64(), 23: pa.int64(),
        25: pa.string(), 1042: pa.string(), 1043: pa.string(),
        700: pa.float64(), 701: pa.float64(), 1700: pa.float64(),
        1082: pa.date32(), 1114: pa.timestamp("us"), 1184: pa.timestamp("us", tz="UTC"),
    }
    if oid not in types:
        raise BadInputError(f"{where}: column {column} has a PostgreSQL type (oid {oid}) OPAL cannot read")
    return types[oid]


def _table_error(exc: Exception, table: str, where: str) -> BadInputError:
    """A one-line refusal for a PostgreSQL error, naming no value of the table."""
    # A server error about the rows (a failed cast, a constraint) can quote a
    # value: name only its class and SQLSTATE. Connection errors carry none.
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        first = f"{type(exc).__name__} (SQLSTATE {sqlstate})"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BadInputError(f"cannot read table {table} at {where}: {first}")


def _stream_table(url: str, *, check: Any) -> Generator[pa.Schema | pa.Table, None, None]:
    """The table's Arrow schema (``check``-ed, before any row is read), then its
    rows as Arrow tables of at most ``_BATCH_ROWS`` rows, in a stable order (by
    every column), through a server-side cursor: one batch in memory at a time.

    Raises:
        BadInputError: a bad URL, an unreadable table, a column of a type OPAL
            cannot read, or ``check``'s refusal.
    """
    import psycopg
    import pyarrow as pa
    from psycopg import sql

    conninfo, table = split_table_url(url)
    where = redact_url(url)
    ident = sql.Identifier(*table.split("."))
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(ident))
                desc = cur.description or []
            schema = pa.schema([(d.name, _arrow_type(d.type_code, d.name, where)) for d in desc])
            check(schema)
            yield schema
            order = sql.SQL(", ").join(sql.Identifier(d.name) for d in desc)
            with conn.cursor(name="opal_snapshot") as cur:
                cur.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(ident, order))
                while batch := cur.fetchmany(_BATCH_ROWS):
                    columns = list(zip(*batch, strict=True))
                    arrays = [
                        pa.array([None if v is None else float(v) for v in col], pa.float64())
                        if field.type == pa.float64() else pa.array(col, field.type)
                        for field, col in zip(schema, columns, strict=True)
                    ]
                    yield pa.Table.from_arrays(arrays, schema=schema)
    except psycopg.Error as exc:
        raise _table_error(exc, table, where) from None


def snapshot_table(url: str, folder: Path, *, check: Any) -> tuple[Path, pa.Schema, int, str]:
    """Copy a table to a Parquet snapshot in ``folder``; (path, schema, rows, version).

    Rows are read in a stable order (by every column) so an unchanged table
    gives a byte-identical snapshot, hence the same version.
    """
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    stream = _stream_table(url, check=check)
    schema = next(stream)
    assert isinstance(schema, pa.Schema)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".parquet.tmp")
    os.close(fd)
    rows = 0
    try:
        with closing(stream), pq.ParquetWriter(tmp, schema) as writer:
            for table in stream:
                assert isinstance(table, pa.Table)
                writer.write_table(table)
                rows += table.num_rows
            if rows == 0:
                writer.write_table(schema.empty_table())
        version = fingerprint_file(Path(tmp))
        final = folder / f"{version}.parquet"
        os.chmod(tmp, 0o600)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final, schema, rows, version


def snapshot_table_partitioned(
    url: str, folder: Path, *, parts: int, key: str, unit: str, check: Any
) -> tuple[Path, int, str]:
    """Stream a table into a partitioned snapshot ``folder/VERSION/`` of ``parts``
    partitions, bucketed by ``opal.data.partition.PartitionWriter`` (the same
    keyed unit hash as ``opal dataset partition``); (directory, rows, version).

    Rows arrive in a stable order (by every column) and in batches of a fixed
    size, so an unchanged table gives byte-identical partitions, hence the
    same version (``Partitioned.version``) and the same directory.

    Raises:
        BadInputError: as ``snapshot_table``; ``parts`` out of range.
    """
    import secrets
    import shutil

    import pyarrow as pa

    from opal.data.partition import MAX_PARTS, PartitionWriter, read_partitioned

    if not isinstance(parts, int) or isinstance(parts, bool) or not 1 <= parts <= MAX_PARTS:
        raise BadInputError(f"--parts must be a whole number from 1 to {MAX_PARTS}, found {parts!r}")
    stream = _stream_table(url, check=check)
    with closing(stream):
        schema = next(stream)
        assert isinstance(schema, pa.Schema)
        folder.mkdir(parents=True, exist_ok=True)
        incoming = folder / f".incoming-{secrets.token_hex(8)}"
        with PartitionWriter(incoming, parts=parts, key=key, unit=unit, schema=schema) as writer:
            for table in stream:
                assert isinstance(table, pa.Table)
                writer.write(table)
    try:
        written = read_partitioned(incoming)
        version = written.version()
        final = folder / version
        os.chmod(incoming, 0o700)
        if not final.exists():
            try:
                os.replace(incoming, final)
            except OSError:
                if not final.is_dir():   # not a concurrent snapshot of the same content
                    raise
        # else the same content was snapshotted before (byte for byte the same): keep that one
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return final, sum(written.rows), version


def _from_row(row: Any) -> Dataset:
    return Dataset(
        name=row["name"],
        path=Path(row["path"]),
        schema=row["schema"],
        rows=int(row["rows"]),
        fingerprint=row["fingerprint"],
        policy=ReleasePolicy.from_dict(json.loads(row["policy"])),
        registered=row["registered"],
        source=row["source"],
        table_parts=None if row["table_parts"] is None else int(row["table_parts"]),
        domains=domains_from_dict(json.loads(row["domains"] or "{}"), where=f"dataset {row['name']}"),
    )


_SELECT = (
    "SELECT d.*, s.source AS source, m.domains AS domains, p.parts AS table_parts FROM datasets d "
    "LEFT JOIN dataset_sources s ON s.name = d.name LEFT JOIN dataset_domains m ON m.name = d.name "
    "LEFT JOIN dataset_table_parts p ON p.name = d.name"
)


def get(node: Node, name: str) -> Dataset:
    _ensure_sources(node)
    row = node.db.one(_SELECT + " WHERE d.name = ?", (name,))
    if row is None:
        raise BadInputError(f"no dataset named {name!r}; register it with opal dataset register {name} PATH")
    return _from_row(row)


def list_datasets(node: Node) -> list[Dataset]:
    _ensure_sources(node)
    return [_from_row(r) for r in node.db.query(_SELECT + " ORDER BY d.name")]
