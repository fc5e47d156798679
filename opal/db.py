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
import time
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
    pool       TEXT PRIMARY KEY,
    total      INTEGER NOT NULL,
    spent      INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0),
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    CHECK (spent + reserved <= total)
);
CREATE TABLE IF NOT EXISTS budget_owners (
    dataset    TEXT PRIMARY KEY,
    pool       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_events (
    run_id     TEXT NOT NULL,
    dataset    TEXT NOT NULL,
    epsilon    INTEGER NOT NULL,
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

# How long a process whose PostgreSQL connection dropped waits for the server.
_RECONNECT_SECONDS = 30.0

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
            try:
                self._conn().executescript(SCHEMA + _SQLITE_APPEND_ONLY)
            except sqlite3.OperationalError as exc:
                if _disk_full(exc, path):
                    raise _disk_full_error(str(path)) from None
                raise

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
        conn = self._begin()
        try:
            try:
                yield conn
            except BaseException:
                _rollback(conn)
                raise
            else:
                conn.execute("COMMIT")
        except Exception as exc:
            if self._lost(exc):
                # The server went away mid-transaction: it rolled back, and
                # this connection is dead; the next call opens a new one.
                self.close()
                raise InternalError(
                    f"lost the connection to the database {self.where} mid-transaction; "
                    "nothing of it was written: run the command again"
                ) from None
            if _disk_full(exc, self.path):
                # Nothing of the transaction is kept: SQLite and PostgreSQL
                # roll back a commit that could not be written.
                _rollback(conn)
                raise _disk_full_error(self.where) from None
            raise

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        """Read several tables as of one moment, taking no write lock (a read-only copy of
        the database works too). Yields a connection with the ``execute`` surface."""
        conn = self._conn()
        if self.dialect == "sqlite":
            conn.execute("BEGIN")  # deferred: the first read fixes the WAL snapshot
        else:
            conn._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            yield conn
        finally:
            _rollback(conn)  # nothing was written

    def _begin(self) -> Any:
        """A connection inside a fresh write transaction. On PostgreSQL a
        connection the server dropped (a restart, a failover) is replaced once."""
        conn = self._conn()
        if self.dialect == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            return conn
        try:
            conn.begin()
        except Exception as exc:
            if not self._lost(exc):
                raise
            conn = self._reconnect()
            conn.begin()
        return conn

    def _reconnect(self) -> Any:
        """A new connection after the server dropped ours, waiting for it to come
        back (a restart, crash recovery, a failover) for up to
        ``OPAL_DB_RECONNECT_SECONDS`` (default 30)."""
        import logging

        self.close()
        deadline = time.monotonic() + float(os.environ.get("OPAL_DB_RECONNECT_SECONDS") or _RECONNECT_SECONDS)
        delay = 0.1
        logging.getLogger("opal.db").warning("lost the connection to %s; reconnecting", self.where)
        while True:
            try:
                return self._conn()
            except InternalError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _lost(self, exc: BaseException) -> bool:
        """Did the PostgreSQL server drop this process's connection?"""
        if self.dialect != "postgresql":
            return False
        import psycopg

        conn = getattr(self._local, "conn", None)
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and (
            conn is None or conn.broken
        )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._conn()
        if self.dialect == "postgresql":
            try:
                return list(conn.execute(sql, params))
            except Exception as exc:
                if not self._lost(exc):
                    raise
                # a read is safe to repeat on a new connection
                return list(self._reconnect().execute(sql, params))
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, params))
        finally:
            conn.row_factory = None

    def tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows as plain tuples, by position only: bulk reads (the audit) without a named row each."""
        if self.dialect == "postgresql":
            return [tuple(r) for r in self.query(sql, params)]
        return self._conn().execute(sql, params).fetchall()  # type: ignore[no-any-return]

    def ledger_leaf_hashes(self, size: int) -> bytes:
        """The leaf_hash column of ledger entries 0 … ``size - 1``, concatenated in index
        order, built by the database itself (no Python object per row). The caller
        proves it against a root it holds."""
        if self.dialect == "postgresql":
            row = self.one(
                "SELECT string_agg(leaf_hash, ''::bytea ORDER BY idx) AS a FROM ledger WHERE idx < ?", (size,)
            )
        else:
            # An aggregate over a subquery with ORDER BY reads it in that order: SQLite
            # never flattens such a subquery into an aggregate (its query-flattening
            # rule 16, kept for group_concat), and older versions have no ORDER BY
            # inside group_concat.
            row = self.one(
                "SELECT CAST(group_concat(leaf_hash, '') AS BLOB) AS a FROM "
                "(SELECT leaf_hash FROM ledger WHERE idx < ? ORDER BY idx)",
                (size,),
            )
        return bytes(row["a"]) if row is not None and row["a"] is not None else b""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is dropped anyway
                pass


def _disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's disk_full (SQLSTATE 53100), ENOSPC/EDQUOT,
    or an SQLite I/O error on a file system with no room left (creating the
    WAL's shared-memory file fails that way)."""
    import errno

    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
            return True
        return (code is not None and code & 0xFF == sqlite3.SQLITE_IOERR or "disk I/O error" in str(exc)) and (
            path is not None and _no_room(path.parent)
        )
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "sqlstate", None) == "53100"


def _no_room(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 256 * 1024


def _disk_full_error(where: str) -> InternalError:
    return InternalError(
        f"the disk holding the database {where} is full; nothing was written: "
        "free some space and run the command again"
    )


def _rollback(conn: Any) -> None:
    try:
        conn.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - no transaction left to roll back
        pass


def ensure_tables(db: Database, statements: Sequence[str], done: weakref.WeakSet[Database]) -> None:
    """Run a package's idempotent ``CREATE … IF NOT EXISTS`` statements once per
    Database; ``done`` (one per package) remembers where they already ran."""
    if db in done:
        return
    for sql in statements:
        _PRIMARY_KEYS.update(_primary_keys(sql))
    with db.transaction() as tx:
        for sql in statements:
            tx.execute(sql)
    done.add(db)


def _open_sqlite(path: Path | None) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise InternalError(f"cannot open database {path}: {exc}") from None
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=60000")
    except sqlite3.OperationalError as exc:
        conn.close()
        if _disk_full(exc, path):
            raise _disk_full_error(str(path)) from None
        raise
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


def _primary_keys(script: str) -> dict[str, tuple[str, ...]]:
    """The primary key of every ``CREATE TABLE`` in ``script`` (one statement or many)."""
    keys: dict[str, tuple[str, ...]] = {}
    for statement in script.split(";"):
        m = re.search(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\(", statement)
        if not m:
            continue
        body = statement[m.end() : statement.rfind(")")]
        table = m.group(1).lower()
        composite = re.search(r"PRIMARY KEY\s*\(([^)]*)\)", body)
        if composite:
            keys[table] = tuple(c.strip() for c in composite.group(1).split(","))
            continue
        single = re.search(r"(?:^|[(,])\s*(\w+)\s+\w+(?:\s+\w+)*?\s+PRIMARY KEY", body)
        if single:
            keys[table] = (single.group(1),)
    return keys


# Tables created later by ensure_tables() add their keys here, so their
# INSERT OR REPLACE translates to the right ON CONFLICT clause on PostgreSQL.
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
            if key is None:
                # Fail loudly: a plain INSERT would raise UniqueViolation on the
                # second write of a row, far from this cause.
                raise InternalError(
                    f"INSERT OR REPLACE into {table}: its primary key is unknown; "
                    "create the table through db.SCHEMA or ensure_tables()"
                )
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

    @property
    def broken(self) -> bool:
        """Closed, or lost (psycopg marks a connection BAD once the server is gone)."""
        from psycopg import pq

        return bool(self._conn.closed or self._conn.pgconn.status == pq.ConnStatus.BAD)

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
