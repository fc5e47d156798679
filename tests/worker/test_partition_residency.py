"""A worker process keeps partition runtimes resident within its memory budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.scenario import Scenario, build
from opal.data import catalog
from opal.data.partition import node_key, partition
from opal.worker import state


@pytest.fixture
def parted(tmp_path: Path) -> Iterator[tuple[Scenario, catalog.Dataset]]:
    state.close_runtimes()  # what earlier tests left resident in this process counts against the budget
    sc = build(tmp_path / "home", subscribers=300, days=1)
    folder = sc.data.parent / "parts"
    partition(sc.data, folder, parts=3, key=node_key(sc.node.home), unit="msisdn")
    ds = catalog.register(sc.node, "parted", folder, signer=sc.node.keyring.signer("olga"))
    yield sc, ds
    state.close_runtimes()


def test_partitions_beyond_the_budget_are_stopped_least_recently_used_first(
        parted: tuple[Scenario, catalog.Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    _, ds = parted
    one = max(state.partition_estimate(f, state.limits()) for f in ds.partition_files())
    monkeypatch.setenv("OPAL_WORKER_CONCURRENCY", "1")
    monkeypatch.setenv("OPAL_WORKER_MEMORY", str(2 * one + one // 2))     # room for two partitions
    first = state.runtime_for(ds, 0)
    state.runtime_for(ds, 1)
    assert state.runtime_for(ds, 0) is first                               # still resident, now most recent
    state.runtime_for(ds, 2)
    assert sorted(state.resident()) == ["parted/0", "parted/2"]            # partition 1 was least recently used
    assert first.run(source="def contributions(data, params):\n    return data.cdr[['msisdn']].head(1)\n",
                     entrypoint="contributions", params={}) is not None


def test_a_budget_smaller_than_one_partition_still_serves_it_alone(
        parted: tuple[Scenario, catalog.Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    _, ds = parted
    monkeypatch.setenv("OPAL_WORKER_MEMORY", "1")
    for part in (0, 1, 2):
        state.runtime_for(ds, part)
        assert list(state.resident()) == [f"parted/{part}"]


_BY_REGION = (
    "def contributions(data, params):\n"
    "    t = data.cdr\n"
    "    return t.groupby(['msisdn', 'region'], as_index=False).size()\n"
)


def _zygote_pid(runtime: object) -> int:
    proc = runtime._proc  # type: ignore[attr-defined]
    assert proc is not None and proc.poll() is None
    return int(proc.pid)


def test_partitions_streamed_through_a_budget_of_one_reuse_one_zygote_and_hold_each_partition(
        parted: tuple[Scenario, catalog.Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    from opal.sandbox import Runtime
    from opal.sandbox.pseudonyms import for_run

    _, ds = parted
    monkeypatch.setenv("OPAL_WORKER_CONCURRENCY", "1")
    monkeypatch.setenv("OPAL_WORKER_MEMORY", "1")
    first = state.runtime_for(ds, 0)
    zygote = _zygote_pid(first)
    for part in (1, 2, 0, 2):
        runtime = state.runtime_for(ds, part)
        assert runtime is first and _zygote_pid(runtime) == zygote   # reloaded, not restarted
        assert list(state.resident()) == [f"parted/{part}"]
        file = ds.partition_files()[part]
        truth = pq.read_table(file, columns=["msisdn"]).column(0).to_pandas()
        assert runtime.table_rows == {"cdr": len(truth)}
        assert runtime.unit_count("msisdn", table="cdr") == truth.nunique()
        # the same table as a zygote started on that partition alone, pseudonyms included
        # (a unit dictionary left from the previous partition would give other pseudonyms)
        spec = for_run(table="cdr", column="msisdn", seed=bytes(32))
        got = runtime.run(source=_BY_REGION, entrypoint="contributions", params={}, pseudonyms=spec)
        with Runtime(tables={"cdr": file}, limits=runtime.limits) as fresh:
            want = fresh.run(source=_BY_REGION, entrypoint="contributions", params={}, pseudonyms=spec)
        key = ["msisdn", "region"]
        assert got.sort_values(key).reset_index(drop=True).equals(want.sort_values(key).reset_index(drop=True))
        assert len(got) > 0


def test_a_reload_that_fails_leaves_a_runtime_that_restarts_on_its_next_job(
        parted: tuple[Scenario, catalog.Dataset], tmp_path: Path) -> None:
    from opal.errors import InternalError
    from opal.sandbox import Runtime

    _, ds = parted
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is no parquet file PAR1")
    with Runtime(tables={"cdr": ds.partition_files()[0]}) as runtime:
        before = _zygote_pid(runtime)
        with pytest.raises(InternalError, match="failed to load its tables: ArrowInvalid while loading"):
            runtime.reload(tables={"cdr": broken})
        runtime.reload(tables={"cdr": ds.partition_files()[1]})     # a fresh zygote, the new partition
        assert _zygote_pid(runtime) != before
        rows = pq_rows(ds.partition_files()[1])
        assert runtime.table_rows == {"cdr": rows}
        assert len(runtime.run(source=_BY_REGION, entrypoint="contributions", params={})) > 0


def pq_rows(file: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(file).metadata.num_rows)


def test_the_budget_is_shared_by_the_pool_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPAL_WORKER_MEMORY", str(8 << 30))
    monkeypatch.setenv("OPAL_WORKER_CONCURRENCY", "2")
    assert state.memory_budget() == 4 << 30


@pytest.mark.parametrize("text, expected", [("8G", 8 << 30), ("512M", 512 << 20), ("1.5G", 3 << 29), ("4096", 4096)])
def test_memory_sizes_parse(text: str, expected: int) -> None:
    from opal.worker.service import parse_memory

    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "0", "-1G", "8X"])
def test_a_bad_memory_size_is_refused_naming_the_form(text: str) -> None:
    from opal.errors import BadInputError
    from opal.worker.service import parse_memory

    with pytest.raises(BadInputError, match="such as 8G or 512M"):
        parse_memory(text)


def test_a_partition_zygote_keeps_a_warm_heap_sized_to_its_partition(
        parted: tuple[Scenario, catalog.Dataset]) -> None:
    # a fixed 1 GiB heap per partition zygote made memory follow the number of partitions
    _, ds = parted
    whole = state.limits().warm_memory_bytes
    runtime = state.runtime_for(ds, 0)
    runtime.unit_count("msisdn", table="cdr")
    # at most the partition's share (and half its size, warm_memory_ratio): this small
    # partition's heap may round down to no huge page at all
    assert runtime.warm_memory_bytes <= 64 << 20 < whole


def test_a_zygote_reloaded_many_times_holds_one_partition_not_all_it_held(tmp_path: Path) -> None:
    # A reload frees the previous tables by reference counting, without collecting the
    # whole (frozen) heap each time: 20 reloads of 10 MB partitions must not add up.
    import pandas as pd

    from opal.sandbox import Runtime
    from opal.sandbox.pseudonyms import run_pseudonymised

    files = []
    for part in range(2):
        path = tmp_path / f"p{part}.parquet"
        pd.DataFrame({"msisdn": range(part * 10**6, (part + 1) * 10**6), "region": ["r"] * 10**6}).to_parquet(path)
        files.append(path)

    def rss(pid: int) -> int:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096

    with Runtime(tables={"cdr": files[0]}) as runtime:
        pid = _zygote_pid(runtime)
        sizes = []
        for i in range(20):
            runtime.reload(tables={"cdr": files[i % 2]})
            contributions, _ = run_pseudonymised(runtime, table="cdr", column="msisdn", source=_BY_REGION,
                                                 entrypoint="contributions", params={})
            assert len(contributions) == 10**6
            assert _zygote_pid(runtime) == pid
            sizes.append(rss(pid))
    # each partition is ~16 MB in memory (and its unit dictionary ~16 MB more): a leak of
    # every reload's tables would grow the zygote by hundreds of MB
    assert max(sizes[2:]) - sizes[1] < 48 << 20, [s >> 20 for s in sizes]


_READS_EVENT = (
    "def contributions(data, params):\n"
    "    t = data.cdr\n"
    "    return t[t['event'] == 'call'][['msisdn', 'region']].drop_duplicates()\n"
)


def test_a_streamed_partition_decodes_only_what_its_run_reads_and_a_wider_run_gets_every_column(
        parted: tuple[Scenario, catalog.Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    from opal.errors import AlgorithmFailed

    _, ds = parted
    monkeypatch.setenv("OPAL_WORKER_CONCURRENCY", "1")
    monkeypatch.setenv("OPAL_WORKER_MEMORY", "1")
    every = list(catalog.SCHEMAS["cdr"].columns)
    narrow = {"cdr": ("region", "msisdn")}
    first = state.runtime_for(ds, 0)                                 # a zygote started for a partition: every column
    zygote = _zygote_pid(first)
    assert first.loaded_columns == {"cdr": every}
    streamed = state.runtime_for(ds, 1, read=narrow)                 # reloaded for a run reading two columns
    assert streamed is first and _zygote_pid(streamed) == zygote
    assert streamed.loaded_columns == {"cdr": ["msisdn", "region"]}  # in the file's order; the rest never decoded
    assert streamed.table_columns == {"cdr": every}                  # the public schema is still known
    with pytest.raises(AlgorithmFailed):                             # the column it did not declare is not there
        streamed.run(source=_READS_EVENT, entrypoint="contributions", params={}, read=narrow)
    assert state.runtime_for(ds, 1, read=narrow) is streamed          # held: no reload
    assert streamed.loaded_columns == {"cdr": ["msisdn", "region"]}
    wider = state.runtime_for(ds, 1, read={"cdr": ("msisdn", "region", "event")})
    assert wider is first and _zygote_pid(wider) == zygote           # the same partition again, every column
    assert wider.loaded_columns == {"cdr": every}
    assert len(wider.run(source=_READS_EVENT, entrypoint="contributions", params={},
                         read={"cdr": ("msisdn", "region", "event")})) > 0
    assert state.runtime_for(ds, 1, read=narrow).loaded_columns == {"cdr": every}  # a superset serves it


def test_a_data_free_check_on_a_partitioned_dataset_takes_the_partition_held_without_a_reload(
        parted: tuple[Scenario, catalog.Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    _, ds = parted
    monkeypatch.setenv("OPAL_WORKER_CONCURRENCY", "1")
    monkeypatch.setenv("OPAL_WORKER_MEMORY", "1")
    state.runtime_for(ds, 0)
    streamed = state.runtime_for(ds, 2, read={"cdr": ("msisdn", "day")})    # partition 0's zygote, reloaded
    zygote = _zygote_pid(streamed)
    assert state.runtime_for(ds) is streamed                        # not partition 0 loaded for a check on no data
    assert _zygote_pid(streamed) == zygote and streamed.loaded_columns == {"cdr": ["msisdn", "day"]}
    assert list(state.resident()) == ["parted/2"]
