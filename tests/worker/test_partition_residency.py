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
    runtime.units("msisdn", table="cdr")
    # at most the partition's share (and half its size, warm_memory_ratio): this small
    # partition's heap may round down to no huge page at all
    assert runtime.warm_memory_bytes <= 64 << 20 < whole
