"""The node's database: SQLite by default, PostgreSQL when ``OPAL_DB_URL`` is set.

One connection per process and thread. Every write goes through
``Database.transaction()``, which takes the database-wide write lock up front,
so two writers never interleave a read-then-write (the budget check and its
reservation, the ledger's next index and its insert):

- SQLite: ``BEGIN IMMEDIATE`` on a WAL database with ``synchronous=FULL`` (a
  commit is on disk before ``transaction()`` returns).
- PostgreSQL (``OPAL_DB_URL=postgresql://…``, several nodes sharing one
  ledger): ``BEGIN`` then ``pg_advisory_xact_lock``, released at commit or
  rollback; ``synchronous_commit`` is left at its durable default.

Callers write SQLite-flavoured SQL with ``?`` placeholders; on PostgreSQL it is
translated (placeholders, ``INSERT OR REPLACE``/``OR IGNORE``, column types)
and rows are indexable by position and by column name, like ``sqlite3.Row``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from opal.errors import InternalError

__all__ = ["SCHEMA", "Database", "Row", "ensure_tables"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    idx        INTEGER PRIMARY KEY,
    entry      BLOB    NOT NULL,
    leaf_hash  BLOB    NOT NULL,
    type       TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    time       TEXT    NOT NULL,
    subject    TEXT
);
CREATE INDEX IF NOT EXISTS ledger_type ON ledger(type);
CREATE INDEX IF NOT EXISTS ledger_subject ON ledger(subject);
CREATE INDEX IF NOT EXISTS ledger_actor ON ledger(actor);
CREATE TABLE IF NOT EXISTS checkpoints (
    size       INTEGER NOT NULL,
    root       TEXT    NOT NULL,
    origin     TEXT    NOT NULL,
    signer     TEXT    NOT NULL,
    signature  TEXT    NOT NULL,
    time       TEXT    NOT NULL,
    PRIMARY KEY (size, signer, root)
);
CREATE TABLE IF NOT EXISTS cosignatures (
    size       INTEGER NOT NULL,
    root       TEXT    NOT NULL,
    origin     TEXT    NOT NULL,
    witness    TEXT    NOT NULL,
    signature  TEXT    NOT NULL,
    time       TEXT    NOT NULL,
    PRIMARY KEY (size, witness, root)
);
CREATE TABLE IF NOT EXISTS keys (
    name       TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    role       TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created    TEXT NOT NULL,
    revoked_at TEXT,
    revoke_reason TEXT
);
CREATE TABLE IF NOT EXISTS bundles (
    digest     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    author     TEXT NOT NULL,
    signature  TEXT NOT NULL,
    submitted  TEXT NOT NULL,
    revoked_at TEXT,
    revoke_reason TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
    digest     TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    statement  TEXT NOT NULL,
    signature  TEXT NOT NULL,
    verdict    TEXT NOT NULL,
    time       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    name       TEXT PRIMARY KEY,
    path       TEXT NOT NULL,
    schema     TEXT NOT NULL,
    rows       INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    policy     TEXT NOT NULL,
    registered TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS budget (
    dataset    TEXT PRIMARY KEY,
    total      REAL NOT NULL,
    spent      REAL NOT NULL DEFAULT 0,
    reserved   REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS budget_events (
    run_id     TEXT NOT NULL,
    dataset    TEXT NOT NULL,
    epsilon    REAL NOT NULL,
    state      TEXT NOT NULL,
    actor      TEXT NOT NULL,
    time       TEXT NOT NULL,
    PRIMARY KEY (run_id, state)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    algorithm  TEXT NOT NULL,
    digest     TEXT NOT NULL,
    dataset    TEXT NOT NULL,
    params     TEXT NOT NULL,
    epsilon    REAL NOT NULL,
    requester  TEXT NOT NULL,
    state      TEXT NOT NULL,
    cache_key  TEXT NOT NULL,
    created    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    result     TEXT,
    result_digest TEXT,
    error      TEXT,
    request_index INTEGER,
    cached_from TEXT
);
CREATE INDEX IF NOT EXISTS runs_cache ON runs(cache_key, state);
CREATE TABLE IF NOT EXISTS bundle_files (
    digest     TEXT NOT NULL,
    path       TEXT NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (digest, path)
);
CREATE TABLE IF NOT EXISTS run_decisions (
    run_id     TEXT PRIMARY KEY,
    record     TEXT NOT NULL,
    digest     TEXT NOT NULL
);
"""

# An extra layer, not the guarantee: the Merkle tree and the signatures detect
# any rewrite even when these triggers are dropped by someone with file access.
_SQLITE_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""

_PG_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION opal_ledger_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the ledger is append-only'; END; $$ LANGUAGE plpgsql;
DO $$ BEGIN
  -- Only when missing: CREATE OR REPLACE TRIGGER would lock the ledger table
  -- against every other node each time a process opens the database.
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'ledger_no_update'
                 AND tgrelid = 'ledger'::regclass) THEN
    CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION opal_ledger_append_only();
  END IF;
END $$;
"""

# Key of the database-wide write lock on PostgreSQL ("opal" in ASCII).
_PG_WRITE_LOCK = 0x6F70616C


class Database:
    """A thin, explicit wrapper: ``query``/``one`` to read, ``transaction`` to write.

    ``url`` (default ``$OPAL_DB_URL``) selects PostgreSQL; otherwise ``path`` is
    the SQLite file.
    """

    def __init__(self, path: Path | None = None, *, url: str | None = None) -> None:
        self.path = path
        # url="" forces SQLite even when OPAL_DB_URL is set (tests, tools).
        self.url = (url if url is not None else os.environ.get("OPAL_DB_URL")) or None
        self._local = threading.local()
        self._pid = os.getpid()
        if self.url is not None:
            if not self.url.startswith(("postgresql://", "postgres://")):
                raise InternalError(
                    f"OPAL_DB_URL must be a postgresql:// URL, found {self.url.split(':', 1)[0]}://…; "
                    "unset it to use the SQLite file in OPAL_HOME"
                )
            self.dialect = "postgresql"
        elif path is None:
            raise InternalError("Database needs a SQLite path or a postgresql:// URL")
        else:
            self.dialect = "sqlite"
        if self.dialect == "postgresql":
            with self.transaction() as tx:  # the write lock serializes concurrent first starts
                tx.executescript(SCHEMA + _PG_APPEND_ONLY)
        else:
            # executescript commits any open transaction first, so it runs on
            # its own; every statement is idempotent.
            self._conn().executescript(SCHEMA + _SQLITE_APPEND_ONLY)

    @property
    def where(self) -> str:
        """Where the data lives, for messages (never the URL's password)."""
        if self.url is not None:
            return re.sub(r"//[^@/]*@", "//", self.url)
        return str(self.path)

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._pid != os.getpid():
            self._pid = os.getpid()
            conn = _PgConnection.open(self.url) if self.url is not None else _open_sqlite(self.path)
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Hold the write lock until the block ends; commit (durably) or roll back.

        Yields a ``sqlite3.Connection`` on SQLite, an object with the same
        ``execute``/``executescript`` surface on PostgreSQL.
        """
        conn = self._conn()
        if self.dialect == "postgresql":
            conn.begin()
        else:
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._conn()
        if self.dialect == "postgresql":
            return list(conn.execute(sql, params))
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, params))
        finally:
            conn.row_factory = None

    def joined_bytes(self, sql: str, params: Sequence[Any] = ()) -> bytes:
        """The first column of every row (blobs), concatenated: bulk reads without a Python row each."""
        conn = self._conn()
        return b"".join(bytes(r[0]) for r in conn.execute(sql, params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def ensure_tables(db: Database, statements: Sequence[str], done: weakref.WeakSet[Database]) -> None:
    """Run a package's idempotent ``CREATE … IF NOT EXISTS`` statements once per
    Database; ``done`` (one per package) remembers where they already ran."""
    if db in done:
        return
    with db.transaction() as tx:
        for sql in statements:
            tx.execute(sql)
    done.add(db)


def _open_sqlite(path: Path | None) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise InternalError(f"cannot open database {path}: {exc}") from None
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


# -- PostgreSQL --------------------------------------------------------------


class Row(tuple):  # type: ignore[type-arg]
    """A result row indexable by position and by column name, like ``sqlite3.Row``."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Self:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                key = self._names[key]
            except KeyError:
                raise IndexError(f"no column named {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    names = {d.name: i for i, d in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


def _primary_keys(schema: str) -> dict[str, tuple[str, ...]]:
    keys: dict[str, tuple[str, ...]] = {}
    for table, body in re.findall(
        r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", schema, re.DOTALL
    ):
        m = re.search(r"PRIMARY KEY \(([^)]*)\)", body)
        if m:
            keys[table] = tuple(c.strip() for c in m.group(1).split(","))
            continue
        m = re.search(r"^\s*(\w+)\s+\w+\s+PRIMARY KEY", body, re.MULTILINE)
        if m:
            keys[table] = (m.group(1),)
    return keys


_PRIMARY_KEYS = _primary_keys(SCHEMA)
_TYPES = [
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]
_INSERT_OR = re.compile(
    r"^\s*INSERT\s+OR\s+(REPLACE|IGNORE)\s+INTO\s+(\w+)\s*\(([^)]*)\)", re.IGNORECASE | re.DOTALL
)


def translate(sql: str) -> str:
    """SQLite-flavoured SQL as PostgreSQL: ``?`` → ``%s``, ``INSERT OR …``."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
            out.append("%%" if ch == "%" else ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    text = "".join(out)
    m = _INSERT_OR.match(text)
    if m:
        action, table, cols = (
            m.group(1).upper(),
            m.group(2),
            [c.strip() for c in m.group(3).split(",")],
        )
        text = "INSERT INTO" + text[m.start(2) - 1 :].rstrip().rstrip(";")
        if action == "IGNORE":
            text += " ON CONFLICT DO NOTHING"
        else:
            key = _PRIMARY_KEYS.get(table.lower())
            if key:
                rest = [c for c in cols if c not in key]
                update = ", ".join(f"{c} = EXCLUDED.{c}" for c in rest)
                text += f" ON CONFLICT ({', '.join(key)}) " + (
                    f"DO UPDATE SET {update}" if rest else "DO NOTHING"
                )
    return text


def translate_schema(script: str) -> str:
    for pattern, replacement in _TYPES:
        script = pattern.sub(replacement, script)
    return script


class _PgConnection:
    """A psycopg connection with the ``sqlite3.Connection`` surface callers use."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    def open(cls, url: str) -> _PgConnection:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - psycopg is a dependency
            raise InternalError(
                "OPAL_DB_URL needs psycopg; pip install 'psycopg[binary]'"
            ) from None
        try:
            conn = psycopg.connect(url, autocommit=True, row_factory=_row_factory)
        except psycopg.Error as exc:
            where = re.sub(r"//[^@/]*@", "//", url)
            raise InternalError(
                f"cannot connect to {where}: {str(exc).strip().splitlines()[0]}"
            ) from None
        return cls(conn)

    def begin(self) -> None:
        self._conn.execute("BEGIN")
        # The equivalent of SQLite's BEGIN IMMEDIATE: one writer at a time
        # across every node sharing this database, held until COMMIT/ROLLBACK.
        self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_WRITE_LOCK,))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(translate(sql), tuple(params))

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> Any:
        cur = self._conn.cursor()
        cur.executemany(translate(sql), [tuple(p) for p in seq])
        return cur

    def executescript(self, script: str) -> None:
        # Without parameters psycopg sends several statements in one go.
        self._conn.execute(translate_schema(script).encode())

    def close(self) -> None:
        self._conn.close()
