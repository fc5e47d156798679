"""Partitioned datasets: a Hive-style Parquet directory bucketed by a keyed
hash of the privacy unit (docs/scale.md).

    OUT/
      _opal_partitions.json        parts, unit column, key id (no key), rows per part
      part=0/part-0.parquet
      part=1/part-0.parquet
      ...

Each unit lives in exactly one partition, so a run's unit check, per-unit
bounding and per-cell aggregation can run partition by partition and the
partial aggregates add up (``opal.release.gate.combine``).

The bucket is SipHash-2-4 (pandas ``hash_array`` with a 128-bit key) of the
unit's text, modulo the number of parts. The key is the operator node's
(``OPAL_HOME/keys/partition.key``, mode 0600), so a requester who knows an
identifier cannot tell which partition holds it, and so cannot aim an
algorithm's behaviour (a failure, a slow path) at one partition.

Writing streams: the input is read in record batches of 256 k rows (no
read-ahead) and every partition keeps at most ``_FLUSH_ROWS`` rows buffered,
each an independent copy, so memory follows the batch and the number of
parts, never the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opal.canonical import canonical_json, sha256_hex
from opal.errors import BadInputError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from opal.home import Home

__all__ = [
    "MANIFEST",
    "MAX_PARTS",
    "PartitionWriter",
    "Partitioned",
    "is_partitioned",
    "node_key",
    "partition_file",
    "read_partitioned",
]

MANIFEST = "_opal_partitions.json"
FORMAT = "opal-partitions/1"
MAX_PARTS = 4096
_KEY_FILE = "partition.key"
_KEY_ALPHABET = string.ascii_letters + string.digits + string.punctuation  # 94 symbols: 16 of them > 104 bits
_BATCH_ROWS = 1 << 18
_FLUSH_ROWS = 1 << 17


def node_key(home: Home) -> str:
    """The node's partitioning key, made on first use (16 characters: SipHash's 128-bit key)."""
    path = home.keys_dir / _KEY_FILE
    if not path.exists():
        home.ensure()
        key = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
    key = path.read_text()
    if len(key.encode()) != 16:
        raise BadInputError(f"{path} is not a partitioning key (16 ASCII characters); remove it to make a new one")
    return key


def key_id(key: str) -> str:
    """Names the key in the manifest without revealing it."""
    return hashlib.sha256(b"opal-partition-key\x00" + key.encode()).hexdigest()[:16]


def buckets(units: Any, *, key: str, parts: int) -> np.ndarray:
    """The partition of each unit value: SipHash-2-4(key, text of the unit) mod ``parts``.

    Hashes each distinct value once (a batch of CDRs repeats its units).
    """
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(units), use_na_sentinel=True)
    if (codes < 0).any():
        raise BadInputError("the unit column holds missing values; every row needs a unit")
    text = np.asarray(uniques).astype(str).astype(object)
    hashed = pd.util.hash_array(text, hash_key=key, categorize=False)
    part_of: np.ndarray = (hashed % np.uint64(parts)).astype(np.int64)[codes]
    return part_of


def partition_file(folder: Path, part: int) -> Path:
    return folder / f"part={part}" / "part-0.parquet"


class PartitionWriter:
    """Writes tables into ``parts`` Parquet partitions of ``out`` by keyed unit hash.

    Use as a context manager; ``write`` any number of tables with ``schema``.
    The directory appears complete or not at all (written beside, then renamed).
    """

    def __init__(self, out: Path, *, parts: int, key: str, unit: str, schema: pa.Schema) -> None:
        if not isinstance(parts, int) or isinstance(parts, bool) or not 1 <= parts <= MAX_PARTS:
            raise BadInputError(f"--parts must be a whole number from 1 to {MAX_PARTS}, found {parts!r}")
        if out.exists():
            raise BadInputError(f"output {out} exists already; choose a new directory")
        if unit not in schema.names:
            raise BadInputError(f"the input has no unit column {unit!r}")
        self.out, self.parts, self.key, self.unit, self.schema = out, parts, key, unit, schema
        self._tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        self._writers: list[Any] = []
        self._pending: list[list[pa.Table]] = [[] for _ in range(parts)]
        self._pending_rows = [0] * parts
        self.rows = [0] * parts

    def __enter__(self) -> PartitionWriter:
        import pyarrow.parquet as pq

        try:
            shutil.rmtree(self._tmp, ignore_errors=True)
            for part in range(self.parts):
                path = partition_file(self._tmp, part)
                path.parent.mkdir(parents=True)
                self._writers.append(pq.ParquetWriter(path, self.schema))
        except OSError as exc:
            self._abort()
            raise BadInputError(f"cannot write {self.out}: {exc.strerror}; choose a writable path") from None
        return self

    def write(self, table: pa.Table) -> None:
        import numpy as np

        if table.num_rows == 0:
            return
        part_of = buckets(table.column(self.unit).to_numpy(), key=self.key, parts=self.parts)
        order = np.argsort(part_of, kind="stable")
        counts = np.bincount(part_of, minlength=self.parts)
        start = 0
        for part, n in enumerate(counts.tolist()):
            if n:
                # a copy of its own: a slice would keep the whole batch alive until every part flushed
                self._pending[part].append(table.take(order[start:start + n]))
                self._pending_rows[part] += n
                self.rows[part] += n
                if self._pending_rows[part] >= _FLUSH_ROWS:
                    self._flush(part)
            start += n

    def _flush(self, part: int) -> None:
        import pyarrow as pa

        if self._pending_rows[part]:
            self._writers[part].write_table(pa.concat_tables(self._pending[part]))
        self._pending[part], self._pending_rows[part] = [], 0

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            for part in range(self.parts):
                self._flush(part)
                self._writers[part].close()
            manifest = {
                "format": FORMAT,
                "parts": self.parts,
                "unit": self.unit,
                "key_id": key_id(self.key),
                "rows": self.rows,
            }
            (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            os.replace(self._tmp, self.out)
        except OSError as exc:
            self._abort()
            raise BadInputError(f"cannot write {self.out}: {exc.strerror}; choose a writable path") from None

    def _abort(self) -> None:
        for writer in self._writers:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - cleaning up after the first error, which is the one reported
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)


def _batches(source: Path) -> tuple[pa.Schema, Iterator[pa.Table]]:
    """The input's schema and its rows in record batches, one row group (Parquet)
    or one block (CSV) in memory at a time."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    suffix = source.suffix.lower()
    if not source.exists():
        raise BadInputError(f"no input file at {source}")
    if not source.is_file() or suffix not in (".parquet", ".csv"):
        raise BadInputError(f"input {source} is not a .parquet or .csv file")
    try:
        if suffix == ".parquet":
            parquet = pq.ParquetFile(source)
            schema = parquet.schema_arrow
            batches: Iterator[pa.RecordBatch] = parquet.iter_batches(batch_size=_BATCH_ROWS)
        else:
            reader = pcsv.open_csv(source, read_options=pcsv.ReadOptions(block_size=16 << 20))
            schema = reader.schema
            batches = iter(reader)
    except (pa.ArrowInvalid, OSError):
        raise BadInputError(f"{source} is not a readable {suffix[1:]} file") from None

    def tables() -> Iterator[pa.Table]:
        try:
            for batch in batches:
                yield pa.Table.from_batches([batch], schema=schema)
        except (pa.ArrowInvalid, OSError):
            raise BadInputError(f"{source} is not a readable {suffix[1:]} file") from None

    return schema, tables()


@dataclass(frozen=True, kw_only=True)
class Partitioned:
    """A partitioned dataset directory, as its manifest and files say."""

    path: Path
    parts: int
    unit: str
    key_id: str
    rows: tuple[int, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(partition_file(self.path, p) for p in range(self.parts))

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "parts": self.parts, "unit": self.unit, "key_id": self.key_id,
                "rows": sum(self.rows), "rows_per_part": list(self.rows)}

    def check_disjoint(self) -> None:
        """Refuse a directory where a unit has rows in two partitions.

        Per-unit bounding runs partition by partition, so a unit in two
        partitions would count up to twice its bound and break the noise's
        calibration. Checked from the unit columns alone (no key needed:
        the directory may come from another node).

        Raises:
            BadInputError: some unit is in more than one partition (no value named).
        """
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        uniques = []
        for file in self.files:
            column = pq.read_table(file, columns=[self.unit]).column(0)
            uniques.append(np.unique(column.to_numpy()))
            del column
        total = sum(len(u) for u in uniques)
        overlap = total > 0 and len(np.unique(np.concatenate(uniques))) != total
        del uniques
        pa.default_memory_pool().release_unused()  # a worker's main process forks its pool after this
        if overlap:
            raise BadInputError(
                f"{self.path}: some units have rows in more than one partition, which would let them count "
                "more than their bound; partition the data by its unit with opal dataset partition"
            )

    def version(self) -> str:
        """SHA-256 over every partition file's SHA-256 (one changed byte anywhere: a new version)."""
        from opal.data.catalog import fingerprint_file

        return sha256_hex(canonical_json({
            "format": FORMAT,
            "parts": [fingerprint_file(f) for f in self.files],
        }))


def is_partitioned(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def read_partitioned(path: Path) -> Partitioned:
    """The manifest of ``path``, its partition files checked to exist.

    Raises:
        BadInputError: not a partitioned dataset directory, or a partition missing.
    """
    try:
        doc = json.loads((path / MANIFEST).read_text())
        parts, unit, kid = int(doc["parts"]), str(doc["unit"]), str(doc["key_id"])
        rows = tuple(int(r) for r in doc["rows"])
        if doc.get("format") != FORMAT or len(rows) != parts or not 1 <= parts <= MAX_PARTS:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInputError(
            f"{path} is not a partitioned dataset ({MANIFEST} missing or malformed); "
            "make one with opal dataset partition IN OUT --parts N"
        ) from None
    out = Partitioned(path=path, parts=parts, unit=unit, key_id=kid, rows=rows)
    missing = [str(f.relative_to(path)) for f in out.files if not f.is_file()]
    if missing:
        raise BadInputError(f"{path}: partition file(s) {', '.join(missing[:3])} missing; partition it again")
    return out


def partition(source: Path, out: Path, *, parts: int, key: str, unit: str) -> Partitioned:
    """Stream ``source`` (Parquet or CSV) into ``parts`` partitions at ``out``.

    Raises:
        BadInputError: unreadable input, no unit column, bad ``parts``, ``out`` exists.
    """
    schema, tables = _batches(Path(source))
    out = Path(out)
    with PartitionWriter(out, parts=parts, key=key, unit=unit, schema=schema) as writer:
        for table in tables:
            writer.write(table)
    return read_partitioned(out)
