"""Registered datasets: where the data is, its schema, its version, its policy."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from opal.errors import BadInputError
from opal.release.policy import ReleasePolicy
from opal.trust.keys import utcnow

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.keyring import Signer

__all__ = ["DatasetSchema", "SCHEMAS", "Dataset", "register", "get", "list_datasets", "default_policy"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True, kw_only=True)
class DatasetSchema:
    name: str
    unit: str                      # the privacy-unit column
    columns: dict[str, str]        # column -> kind: int | string | timestamp

    def check(self, schema: pa.Schema, *, where: str) -> None:
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

    @property
    def version(self) -> str:
        return self.fingerprint

    @property
    def unit(self) -> str:
        return SCHEMAS[self.schema].unit

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "schema": self.schema,
            "rows": self.rows,
            "version": self.fingerprint,
            "policy": self.policy.to_dict(),
            "registered": self.registered,
        }


def default_policy() -> ReleasePolicy:
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


def register(
    node: Node,
    name: str,
    path: Path,
    *,
    schema: str = "cdr",
    policy: ReleasePolicy | None = None,
    signer: Signer,
) -> Dataset:
    if not _NAME.match(name):
        raise BadInputError(f"dataset name {name!r} must be lower-case letters, digits and _")
    if schema not in SCHEMAS:
        raise BadInputError(f"unknown schema {schema!r}; known: {', '.join(SCHEMAS)}")
    path = path.expanduser().absolute()
    arrow_schema, rows = read_schema(path)
    SCHEMAS[schema].check(arrow_schema, where=str(path))
    policy = policy or default_policy()
    ds = Dataset(
        name=name,
        path=path,
        schema=schema,
        rows=rows,
        fingerprint=fingerprint_file(path),
        policy=policy,
        registered=utcnow(),
    )
    with node.db.transaction() as tx:
        exists = tx.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone()
        if exists:
            raise BadInputError(f"dataset {name!r} is registered already; see opal dataset show {name}")
        tx.execute(
            "INSERT INTO datasets(name, path, schema, rows, fingerprint, policy, registered) VALUES (?,?,?,?,?,?,?)",
            (name, str(path), schema, rows, ds.fingerprint, json.dumps(policy.to_dict()), ds.registered),
        )
        tx.execute(
            "INSERT INTO budget(dataset, total, spent, reserved) VALUES (?,?,0,0)",
            (name, policy.total_epsilon),
        )
        node.ledger.append_in(
            tx,
            type="dataset_registered",
            body={"dataset": name, "schema": schema, "rows": rows, "version": ds.fingerprint},
            signer=signer,
            subject=name,
        )
        node.ledger.append_in(
            tx,
            type="policy_changed",
            body={"dataset": name, "policy": policy.to_dict()},
            signer=signer,
            subject=name,
        )
    return ds


def _from_row(row: Any) -> Dataset:
    return Dataset(
        name=row["name"],
        path=Path(row["path"]),
        schema=row["schema"],
        rows=int(row["rows"]),
        fingerprint=row["fingerprint"],
        policy=ReleasePolicy.from_dict(json.loads(row["policy"])),
        registered=row["registered"],
    )


def get(node: Node, name: str) -> Dataset:
    row = node.db.one("SELECT * FROM datasets WHERE name = ?", (name,))
    if row is None:
        raise BadInputError(f"no dataset named {name!r}; register it with opal dataset register {name} PATH")
    return _from_row(row)


def list_datasets(node: Node) -> list[Dataset]:
    return [_from_row(r) for r in node.db.query("SELECT * FROM datasets ORDER BY name")]
