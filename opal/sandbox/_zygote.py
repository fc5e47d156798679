"""The zygote: holds one dataset resident and forks a fresh child per job.

Started by ``Runtime`` with an empty environment, no inherited descriptors but
its control socket, and an empty temporary working directory, so it never
holds broker URLs, keys or the ledger. It moves into an empty network
namespace before any thread exists, loads the tables once (read-only), warms
the libraries up with a trusted algorithm, then serves jobs: fork, let the
child harden itself and run, enforce the wall-clock limit, report how the
child ended.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from opal.sandbox import _isolation, _protocol, _warm, pseudonyms

ALLOWED_ENV = frozenset(
    {"LANG", "LC_ALL", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GLIBC_TUNABLES"}
)

# A reload collects the whole heap (unfrozen) this often (Zygote._load).
_FULL_COLLECT_EVERY = 16

_WARMUP_SOURCE = '''
import numpy as np
import pandas as pd
import math
import statistics

def helper(g):
    return g["v"].sum()

def contributions(data, params):
    t = data.t
    t = t[t.day.between(params["a"], params["b"])]
    u = t[["uid", "region", "day"]].drop_duplicates()
    g = t.groupby(["region", "day"]).agg(total=("v", "sum"), n=("uid", "nunique"))
    g2 = t.groupby("region")["v"].agg(["sum", "mean", "max", "count", "size", "std"])
    top = t.groupby("uid")["v"].idxmax()
    vc = t["region"].value_counts()
    m = u.merge(t[["uid", "cell"]].drop_duplicates(), on="uid", how="left")
    ts = t["ts"]
    x = t.assign(hour=ts.dt.hour, dow=ts.dt.dayofweek, d=ts.dt.date, f=ts.dt.floor("h"),
                 wk=ts.dt.isocalendar().week, nm=ts.dt.day_name(), st=ts.dt.strftime("%Y"))
    x = x.sort_values(["uid", "ts"], ascending=[True, False]).reset_index(drop=True)
    s = t["region"].str.lower().str.strip().str.replace("a", "b").str.len()
    s2 = t["region"].str.contains("x") | t["region"].str.startswith("r") | t["region"].isin(["a"])
    s3 = t["region"].str.split("-").str[0] + t["region"].str.slice(0, 2)
    c = pd.cut(t["v"], bins=[0, 1, 10, 100]).astype(str)
    q = pd.qcut(t["v"].rank(method="first"), 2, labels=False)
    p = pd.pivot_table(t, index="region", columns="day", values="v", aggfunc="sum", fill_value=0)
    p2 = t.pivot_table(index="region", values="v", aggfunc="mean")
    ct = pd.crosstab(t["region"], t["day"])
    cc = pd.concat([u, u]).rename(columns={"day": "d"}).fillna(0)
    r = t.set_index("ts").sort_index()["v"].rolling(2).mean()
    rs = t.set_index("ts")["v"].resample("D").sum()
    tr = t.groupby("uid")["v"].transform("sum") + t.groupby("uid").cumcount()
    ap = t.groupby("region").apply(helper)
    mp = t["region"].map({"r1": 1}).fillna(0).astype(int)
    ml = t["v"].apply(lambda v: v * 2) + t["v"].map(abs)
    dt = pd.to_datetime(t["ts"].astype(str), utc=True)
    td = (t["ts"] - t["ts"].min()).dt.total_seconds()
    cat = t["event"].astype("category").cat.codes
    dm = pd.get_dummies(t["event"])
    ds = t.describe()
    qq = t["v"].quantile([0.25, 0.75])
    nn = np.log1p(np.abs(t["v"].to_numpy())).sum() + np.where(t["v"] > 1, 1, 0).sum()
    un = np.unique(t["uid"].to_numpy(), return_counts=True)
    st = statistics.mean([1, 2]) + math.sqrt(4) + float(np.median([1, 2]))
    rows = [row.uid for row in t.head(3).itertuples()]
    d = {k: v for k, v in zip(["a"], [1])}
    lst = sorted(set(t["region"].tolist()))
    st2 = "-".join(lst).upper() + f"{st:.2f}" + str(len(d))
    dd = t.to_dict("records")
    mx = t.loc[t["v"] > 0, ["uid", "v"]].iloc[:5].copy()
    mx["w"] = mx["v"] * 2
    mx.loc[mx["w"] > 1, "w"] = 0
    nl = t.nlargest(2, "v").nsmallest(1, "v")
    out = u.merge(g.reset_index(), on=["region", "day"])
    return out[["uid", "region", "day"]]
'''


def _warmup_tables() -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    n = 40
    ts = pd.date_range("2024-01-01", periods=n, freq="7h", tz="UTC")
    frame = pd.DataFrame(
        {
            "uid": np.arange(n, dtype="int64") % 7,
            "ts": ts,
            "day": np.arange(n, dtype="int64") % 5,
            "cell": np.arange(n, dtype="int64") % 3,
            "region": pd.Series([f"r{i % 4}-x" for i in range(n)], dtype="str"),
            "event": pd.Series(["call", "sms", "data", "call"] * (n // 4), dtype="str"),
            "v": np.linspace(0.5, 50, n),
        }
    )
    _make_read_only(frame)
    return {"t": frame}


def _preload_modules() -> None:
    """Import now what pandas/pyarrow import lazily: children cannot read the
    library directories once they run as an unprivileged user."""
    import importlib
    import pkgutil

    import pandas

    skip = ("tests", "plotting", "io.clipboard", "io.excel", "io.sql", "io.pytables", "conftest")
    for package in ("pandas.core", "pandas._libs", "pandas.tseries"):
        mod = importlib.import_module(package)
        for info in pkgutil.walk_packages(mod.__path__, package + "."):
            if any(part in info.name for part in skip):
                continue
            try:
                importlib.import_module(info.name)
            except Exception:  # noqa: BLE001 - optional dependencies are absent
                continue
    for name in (
        "pyarrow.compute",
        "pyarrow.ipc",
        "pandas.core.arrays.arrow",
        "pandas.io.formats.format",
        "pandas.io.formats.printing",
        "encodings.latin_1",
        "encodings.ascii",
        "encodings.utf_16",
        "encodings.idna",
        "unicodedata",
        "statistics",
        "fractions",
        "decimal",
    ):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001
            continue
    del pandas


def _preload_time_zones() -> None:
    """Serve every IANA time zone from memory (about 0.7 MB, 15 ms): a run's
    root is empty, and ``tz_convert("Africa/Kigali")`` must still work.

    zoneinfo (C and pure-Python alike) falls back to
    ``zoneinfo._common.load_tzdata`` when no directory of its search path has
    the zone; the search path is emptied and that loader answers from here.
    """
    import io
    import zoneinfo
    from zoneinfo import _common, _tzpath

    zones: dict[str, bytes] = {}
    for key in sorted(zoneinfo.available_timezones()):
        path = _tzpath.find_tzfile(key)
        try:
            if path is not None:
                with open(path, "rb") as fh:
                    zones[key] = fh.read()
            else:
                with _common.load_tzdata(key) as fh:
                    zones[key] = fh.read()
        except (OSError, ValueError, zoneinfo.ZoneInfoNotFoundError):
            continue

    def load_tzdata(key: str) -> io.BytesIO:
        try:
            return io.BytesIO(zones[key])
        except (KeyError, TypeError):
            raise zoneinfo.ZoneInfoNotFoundError(f"No time zone found with key {key}") from None

    _common.load_tzdata = load_tzdata  # type: ignore[assignment]  # same contract, a BytesIO
    zoneinfo.reset_tzpath(to=[])


def _make_read_only(frame: Any) -> None:
    for block in frame._mgr.blocks:
        values = getattr(block, "values", None)
        flags = getattr(values, "flags", None)
        if flags is not None:
            flags.writeable = False


def _load_table(
    path: str, read: list[str] | None = None, categorical: list[str] | None = None
) -> tuple[Any, int, list[str]]:
    """The table as a read-only DataFrame, its size in memory (Arrow's count),
    and the names of all the file's columns. ``read``: only those columns are
    loaded (the ones the bundles to run declare they read; the others are
    never decoded). ``categorical``: those text columns are held as pandas
    Categoricals (``as_categories``) instead of strings.

    Parquet is read and converted one column at a time, each column's Arrow
    buffers freed as it is converted and handed back to the OS, so the load
    peaks near the size of the data rather than twice it (issue #17: a
    worker's memory follows its data).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = pa.default_memory_pool()
    if path.endswith((".arrow", ".feather", ".ipc", ".arrows", ".csv", ".CSV")):
        if path.lower().endswith(".csv"):
            import pyarrow.csv as pcsv

            # the same reader and type inference as registration (opal.data.catalog.read_schema)
            table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=False))
        else:
            source = pa.memory_map(path, "r")
            try:
                table = pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                source = pa.memory_map(path, "r")
                table = pa.ipc.open_stream(source).read_all()
        names = [str(n) for n in table.column_names]
        if read is not None:
            table = table.select([n for n in names if n in read])
        nbytes = int(table.nbytes)
        frame = table.to_pandas(split_blocks=True, self_destruct=True, use_threads=False)
        del table
        for name in categorical or ():
            if name in frame.columns and pd.api.types.is_string_dtype(frame[name].dtype):
                frame[name] = as_categories(frame[name])
    else:
        schema = pq.read_schema(path)
        # Text columns (regions, event kinds: few distinct values) are stored
        # dictionary-encoded: read as such, then cast to plain strings, they
        # decode faster than the reader expands them (the same strings: what
        # the algorithm sees does not change). Measured on a 3.1 M-row
        # partition: 0.136 s against 0.17 s, with the same peak memory;
        # pq.read_table is as fast but its pre-buffering kept ~100 MB more.
        texts = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        parquet = pq.ParquetFile(path, read_dictionary=texts)
        columns: dict[str, Any] = {}
        nbytes = 0
        names = [str(n) for n in schema.names]
        for name in names:
            if read is not None and name not in read:
                continue
            column = parquet.read(columns=[name], use_threads=False)
            keep_codes = name in texts and name in (categorical or ())
            if name in texts and not keep_codes:
                column = column.cast(pa.schema([schema.field(name)], metadata=column.schema.metadata))
            nbytes += int(column.nbytes)
            columns[name] = column.to_pandas(split_blocks=True, self_destruct=True, use_threads=False)[name]
            if keep_codes:  # the file's dictionary as it is: no string is materialised
                columns[name] = as_categories(columns[name])
            del column
            pool.release_unused()
        frame = pd.DataFrame(columns, copy=False)
        del columns
    pool.release_unused()
    _make_read_only(frame)
    return frame, nbytes, names


def as_categories(column: Any) -> Any:
    """A text column as a pandas Categorical whose categories are its distinct
    values in sorted order, so sorting, grouping and comparing by the codes
    agree with the text (and every partition's codes follow one order)."""
    import pandas as pd

    if not isinstance(column.dtype, pd.CategoricalDtype):
        return column.astype("category")  # inferred categories are sorted
    categories = column.cat.categories
    if categories.is_monotonic_increasing:
        return column
    return column.cat.reorder_categories(categories.sort_values())


def as_text(column: Any) -> Any:
    """A Categorical text column as the plain text column a load gives."""
    return column.astype("str")


def _project(tables: dict[str, Any], read: dict[str, Any] | None) -> dict[str, Any]:
    """``tables`` with each table ``read`` names cut to the columns a bundle
    reads, in the table's order (a column the table lacks stays absent). No
    data is copied: the columns are the resident ones, read-only."""
    if not read:
        return tables
    out = dict(tables)
    for name, columns in read.items():
        if name in out:
            wanted = set(columns)
            out[name] = out[name][[c for c in out[name].columns if c in wanted]]
            _make_read_only(out[name])
    return out


def _categorical_columns(tables: dict[str, Any], categorical: dict[str, Any]) -> dict[str, set[str]]:
    """The columns ``_load_table`` turned into Categoricals (``categorical``)."""
    import pandas as pd

    return {
        name: {
            str(c) for c in frame.columns
            if c in categorical.get(name, ()) and isinstance(frame[c].dtype, pd.CategoricalDtype)
        }
        for name, frame in tables.items()
    }


def _probe(fn: Any, *, fork: Any = os.fork) -> bool:
    """Run ``fn`` in a throwaway child made by ``fork``; True if it returned True
    (False too when the child cannot be made)."""
    read_fd, write_fd = os.pipe()
    try:
        pid = fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return False
    if pid == 0:
        ok = False
        try:
            os.close(read_fd)
            ok = bool(fn())
        except BaseException:  # noqa: BLE001
            ok = False
        finally:
            os.write(write_fd, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_fd)
    answer = os.read(read_fd, 1)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return answer == b"1"


def _seccomp_works() -> bool:
    _isolation._load_seccomp()
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except PermissionError:
        pass
    else:
        return False
    try:
        pid = os.fork()
    except PermissionError:
        return True
    if pid == 0:
        os._exit(0)
    return False


def _pid_namespace_works(forker: _isolation.RunForker) -> bool:
    return _probe(lambda: os.getpid() == 1, fork=lambda: forker.fork(pid_namespace=True))


def _ipc_namespace_works() -> bool:
    _isolation._unshare(_isolation.CLONE_NEWIPC)
    return True


def _empty_root_works() -> bool:
    _isolation.enter_empty_root(os.getcwd())
    return os.listdir("/") == [] and not os.path.exists("/proc") and not os.path.exists("/etc")


def _privilege_drop_works() -> bool:
    os.setgroups([])
    os.setresgid(_isolation.NOBODY, _isolation.NOBODY, _isolation.NOBODY)
    os.setresuid(_isolation.NOBODY, _isolation.NOBODY, _isolation.NOBODY)
    return os.geteuid() != 0


def _clean_environment(control_fd: int, forker: _isolation.RunForker) -> bool:
    if not set(os.environ) <= ALLOWED_ENV:
        return False
    if any(Path.cwd().iterdir()):
        return False
    fds = {int(name) for name in os.listdir("/proc/self/fd")}
    # 0-2 are /dev/null, control_fd is the socket; listdir itself holds one fd
    return len(fds - {0, 1, 2, control_fd, forker.fd}) <= 1


def _detect_layers(
    namespaces: dict[str, bool], control_fd: int, forker: _isolation.RunForker
) -> dict[str, bool]:
    layers = {
        "restricted_python": True,
        "clean_environment": _clean_environment(control_fd, forker),
        "rlimits": True,
        "seccomp": _isolation.seccomp_available() and _probe(_seccomp_works),
        "network_namespace": namespaces.get("network_namespace", False),
        "unprivileged_user": os.geteuid() != 0 or _probe(_privilege_drop_works),
        "ipc_namespace": _probe(_ipc_namespace_works),
        "pid_namespace": _pid_namespace_works(forker),
        "empty_filesystem": _probe(_empty_root_works),
    }
    return layers


class Zygote:
    def __init__(self, sock: socket.socket, control_fd: int) -> None:
        self.sock = sock
        self.control_fd = control_fd
        self.tables: dict[str, Any] = {}
        self.layers: dict[str, bool] = {}
        self.heap: _warm.WarmHeap | None = None
        self.forker = _isolation.RunForker()
        self.reloads = 0
        self.schemas: dict[str, list[str]] = {}  # every column of each table's file, loaded or not
        # text columns held as Categoricals (a bundle's ``categorical``), and the
        # other form of a column a run asked for, made once per load
        self.held_categorical: dict[str, set[str]] = {}
        self.views: dict[tuple[str, str, str], Any] = {}  # (table, column, "categorical" | "text")

    def _described(self) -> dict[str, Any]:
        return {
            n: {"rows": int(len(f)), "columns": self.schemas.get(n, []), "loaded": [str(c) for c in f.columns]}
            for n, f in self.tables.items()
        }

    def start(self, namespaces: dict[str, bool]) -> None:
        config, _ = _protocol.recv(self.sock)
        self.layers = _detect_layers(namespaces, self.control_fd, self.forker)
        if self.layers["seccomp"] and self.layers["pid_namespace"]:
            _isolation.prepare_seccomp(1)  # every run is pid 1 of its namespace
        import numpy  # noqa: F401
        import pandas  # noqa: F401

        from opal.sandbox import _child, _guards

        _guards.facades()
        _preload_modules()
        _preload_time_zones()
        tables: dict[str, Any] = {}
        table_bytes = 0
        read = config.get("read") or {}
        categorical = config.get("categorical") or {}
        for name, path in config["tables"].items():
            tables[name], nbytes, self.schemas[name] = _load_table(path, read.get(name), categorical.get(name))
            table_bytes += nbytes
        self.held_categorical = _categorical_columns(tables, categorical)
        # A trusted warm-up run loads every lazily imported path of the
        # libraries while this process may still read them.
        warm = {
            "source": _WARMUP_SOURCE,
            "entrypoint": "contributions",
            "filename": "<opal-warmup>",
            "params": json.dumps({"a": 0, "b": 3}),
            "limits": {"max_output_rows": 10**6, "max_output_bytes": 2**30},
        }
        tag, payload = _child.execute(warm, _warmup_tables())
        if tag != _child.RECORD_OK:
            raise RuntimeError(f"warm-up failed: {bytes(payload)[:300]!r}")
        _guards.build_globals(filename="<idle>", protected=[])
        self.tables = tables
        gc.collect()
        gc.freeze()
        # Last: nothing the zygote allocates from now on is large.
        # Sized from the data: a small dataset's worker holds little.
        warm_bytes = min(
            int(config.get("warm_memory_bytes", 0)), int(float(config.get("warm_memory_ratio", 0)) * table_bytes)
        )
        self.heap = _warm.WarmHeap.create(warm_bytes)
        _protocol.send(
            self.sock,
            {
                "op": "ready",
                "layers": self.layers,
                "tables": self._described(),
                "warm_memory_bytes": self.heap.size if self.heap is not None else 0,
            },
        )

    def _idle(self) -> None:
        """Warm the heap for the next child while no request is waiting, at
        idle priority: it must not slow the worker finishing the last run."""
        heap = self.heap
        if heap is None or not heap.warming():
            return
        # Back-to-back small runs need little memory: leave them the CPU.
        ready, _, _ = select.select([self.sock], [], [], _warm.SETTLE_SECONDS)
        if ready:
            return
        with _warm.idle_priority():
            while heap.warming():
                ready, _, _ = select.select([self.sock], [], [], 0)
                if ready:
                    return
                heap.step()

    def serve(self) -> None:
        while True:
            self._idle()
            try:
                message, fds = _protocol.recv(self.sock)
            except _protocol.ChannelClosed:
                return
            if message.get("op") == "exit":
                return
            if message.get("op") == "load" and not fds:
                self._load(message)
                continue
            if message.get("op") == "count" and not fds:
                self._count(message)
                continue
            if message.get("op") != "run" or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                _protocol.send(self.sock, {"op": "error", "message": "bad request"})
                continue
            self._run(message["job"], fds[0])

    def _load(self, message: dict[str, Any]) -> None:
        """Replace the resident tables by others of the same kind (the next
        partition of a dataset this process cannot hold whole): what a fresh
        zygote would hold, without its start (interpreter, imports, layer
        probes, warm-up run), which costs more than loading a partition.
        Trusted code only, between jobs; the warm heap is kept. A failure
        ends the zygote (its tables are gone); the reply names the type only,
        as at start."""
        import pyarrow as pa

        # The tables are freed by reference counting: they are not in cycles
        # (measured: the same memory comes back either way). Unfreezing the
        # whole heap to collect it cost two full collections, ~75 ms a
        # reload; every _FULL_COLLECT_EVERY reloads it is done anyway, so
        # cyclic garbage of trusted code frozen with a partition stays bounded.
        self.reloads += 1
        if self.reloads % _FULL_COLLECT_EVERY == 0:
            gc.unfreeze()
        self.tables, self.views = {}, {}
        pseudonyms.forget()
        gc.collect()
        pa.default_memory_pool().release_unused()
        read = message.get("read") or {}
        categorical = message.get("categorical") or {}
        try:
            tables, schemas = {}, {}
            for name, path in message["tables"].items():
                tables[name], _, schemas[name] = _load_table(path, read.get(name), categorical.get(name))
        except Exception as exc:  # noqa: BLE001 - reported to the Runtime, then exit
            _protocol.send(self.sock, {"op": "failed", "message": f"{type(exc).__name__} while loading the dataset"})
            sys.exit(1)
        self.tables, self.schemas = tables, schemas
        self.held_categorical = _categorical_columns(tables, categorical)
        gc.collect()
        gc.freeze()
        _protocol.send(self.sock, {"op": "loaded", "tables": self._described()})

    def _typed(
        self, tables: dict[str, Any], categorical: dict[str, Any], read: dict[str, Any] | None
    ) -> dict[str, Any]:
        """``tables`` with the text columns a run asked for as Categoricals
        (``categorical``) in that form, and those held as Categoricals that it
        did not ask for as plain text: what the run sees does not depend on
        what another run loaded. A conversion of a resident column is made
        once per load and shared, read-only, by the runs that follow."""
        import pandas as pd

        out = dict(tables)
        for name, frame in tables.items():
            wanted = set(categorical.get(name, ()))
            held = self.held_categorical.get(name, set())
            seen = set(read[name]) if read and name in read else set(frame.columns)
            changes: dict[str, Any] = {}
            for column in frame.columns:
                if column not in seen:
                    continue
                if column in wanted and column not in held and pd.api.types.is_string_dtype(frame[column].dtype):
                    convert, kind = as_categories, "categorical"
                elif column in held and column not in wanted:
                    convert, kind = as_text, "text"
                else:
                    continue
                resident = self.tables.get(name)
                if resident is not None and len(resident) == len(frame):  # rows as resident: the shared conversion
                    key = (name, column, kind)
                    if key not in self.views:
                        self.views[key] = convert(resident[column]).array
                    changes[column] = self.views[key]
                else:  # a probe that dropped units: its own rows
                    changes[column] = convert(frame[column]).array
            if changes:
                frame = frame.copy(deep=False)
                for column, values in changes.items():
                    frame[column] = values
                _make_read_only(frame)
                out[name] = frame
        return out

    def _count(self, message: dict[str, Any]) -> None:
        """How many distinct units a column holds: the size of the dictionary
        the run's pseudonyms are drawn over (built here once per resident
        table, so the first run does not build it). Trusted code only."""
        try:
            _, count = pseudonyms.dictionary(message["table"], message["column"], self.tables[message["table"]])
            reply: dict[str, Any] = {"op": "count", "ok": True, "count": int(count)}
        except (KeyError, TypeError, ValueError):
            reply = {"op": "count", "ok": False}
        _protocol.send(self.sock, reply)

    def _run(self, job: dict[str, Any], result_fd: int) -> None:
        from opal.sandbox import _child

        started = time.monotonic()
        reserved = self.heap.reserve() if self.heap is not None else 0
        job = {**job, "limits": {**job["limits"], "reserved_bytes": reserved}}
        # per-run pseudonyms, made here so the seed never reaches the child
        read = job.pop("read", None)
        tables = pseudonyms.apply(self.tables, job.pop("pseudonyms", None))
        tables = _project(self._typed(tables, job.pop("categorical", None) or {}, read), read)
        pid = self.forker.fork(pid_namespace=self.layers.get("pid_namespace", False))
        if pid == 0:
            code = 1
            try:
                self.forker.close_in_child()
                code = _child.run_job(job, tables, result_fd, self.layers)
            finally:
                os._exit(code)
        del tables
        if self.heap is not None:
            self.heap.hand_over()
        os.close(result_fd)
        deadline = started + float(job["limits"]["wall_seconds"])
        pidfd = os.pidfd_open(pid)
        timed_out = parent_gone = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                watched: list[int | socket.socket] = [pidfd, self.sock]
                ready, _, _ = select.select(watched, [], [], remaining)
                if pidfd in ready:
                    break
                if self.sock in ready:
                    # the Runtime only talks while a job runs if it went away
                    parent_gone = True
                    break
        finally:
            os.close(pidfd)
        if timed_out or parent_gone:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        _, status, usage = os.wait4(pid, 0)
        if parent_gone:
            sys.exit(0)
        _protocol.send(
            self.sock,
            {
                "op": "done",
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "timed_out": timed_out,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "wall_seconds": time.monotonic() - started,
                "maxrss_kib": usage.ru_maxrss,
            },
        )


def main(control_fd: int) -> None:
    # Before anything can start a thread: the new user/network namespace
    # requires a single-threaded process.
    namespaces = _isolation.enter_namespaces()
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=control_fd)
    zygote = Zygote(sock, control_fd)
    try:
        zygote.start(namespaces)
    except Exception as exc:  # noqa: BLE001 - reported to the Runtime, then exit
        # Only the type: the text of an error raised while loading the data
        # (e.g. a failed cast) can quote a value, and this message reaches the
        # run's outcome in the ledger.
        detail = f"{type(exc).__name__} while loading the dataset or preparing the sandbox"
        try:
            _protocol.send(sock, {"op": "failed", "message": detail[:500]})
        finally:
            sys.exit(1)
    zygote.serve()
