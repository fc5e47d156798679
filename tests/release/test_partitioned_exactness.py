"""Exactness of the split gate: for every reference algorithm, the partial
aggregates of a partitioned dataset add up to the one-file aggregate, cell
for cell, before noise (sandbox, pseudonyms and unit check included)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.algorithms import Algorithm, algorithms
from opal.data.partition import partition
from opal.data.synth import synthesize
from opal.devloop import dataset_domains
from opal.release.bounding import combine
from opal.release.domains import resolve
from opal.release.gate import partial_aggregate
from opal.sandbox import Runtime
from opal.sandbox.pseudonyms import run_pseudonymised

PARTS = 4


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Runtime, list[Runtime], list[Path]]]:
    folder = tmp_path_factory.mktemp("exact")
    data = folder / "cdr.parquet"
    synthesize(data, subscribers=1500, days=14, seed=11)
    parted = partition(data, folder / "parts", parts=PARTS, key="e" * 16, unit="msisdn")
    whole = Runtime(tables={"cdr": data})
    parts = [Runtime(tables={"cdr": f}) for f in parted.files]
    yield data, whole, parts, list(parted.files)
    for rt in (whole, *parts):
        rt.close()


def _aggregate(algorithm: Algorithm, runtime: Runtime, data: Path, *, read: bool = False):  # type: ignore[no-untyped-def]
    privacy = algorithm.bundle.manifest.privacy
    # no unit above the bound: bounding selects nothing at random, so the aggregate is exact
    unbounded = dataclasses.replace(privacy, max_groups_per_unit=10**6)
    domains = resolve(privacy.groups, dataset_domains(data))
    contributions, units = run_pseudonymised(
        runtime, table="cdr", column="msisdn", source=algorithm.bundle.source,
        entrypoint=algorithm.bundle.manifest.entrypoint, params=algorithm.params,
        read={"cdr": algorithm.bundle.manifest.reads} if read else None,
        categorical=algorithm.bundle.manifest.categorical_map() if read else None)
    return partial_aggregate(contributions, privacy=unbounded, domains=domains, known_units=units)


@pytest.mark.parametrize("algorithm", algorithms(), ids=lambda a: a.name)
def test_partitioned_pre_noise_aggregate_equals_the_one_file_aggregate(
        algorithm: Algorithm, runtimes: tuple[Path, Runtime, list[Runtime], list[Path]]) -> None:
    data, whole, parts, _ = runtimes
    one = _aggregate(algorithm, whole, data)
    combined = combine([_aggregate(algorithm, rt, data) for rt in parts])
    assert one.units.sum() > 0
    np.testing.assert_array_equal(combined.units, one.units)
    assert combined.units_in == one.units_in and combined.rows_in == one.rows_in
    assert combined.dropped == one.dropped
    if one.sums is not None:
        assert combined.sums is not None
        np.testing.assert_allclose(combined.sums, one.sums, rtol=1e-12)


@pytest.mark.parametrize("algorithm", algorithms(), ids=lambda a: a.name)
def test_partitions_streamed_with_only_the_columns_a_bundle_reads_give_the_one_file_aggregate(
        algorithm: Algorithm, runtimes: tuple[Path, Runtime, list[Runtime], list[Path]]) -> None:
    """What a streaming worker does: one zygote reloaded with each partition,
    decoding only the bundle's ``reads``; against the whole file, all columns."""
    import pyarrow.parquet as pq

    data, whole, _, files = runtimes
    reads = algorithm.bundle.manifest.reads
    assert reads is not None and len(reads) < 7                 # every reference bundle declares what it reads
    one = _aggregate(algorithm, whole, data)
    partials = []
    with Runtime(tables={"cdr": files[0]}) as streamer:
        for file in files:
            streamer.reload(tables={"cdr": file}, read={"cdr": reads},
                            categorical=algorithm.bundle.manifest.categorical_map())
            schema = pq.ParquetFile(file).schema_arrow.names
            assert streamer.loaded_columns == {"cdr": [c for c in schema if c in reads]}
            assert streamer.table_columns == {"cdr": schema}
            partials.append(_aggregate(algorithm, streamer, data, read=True))
    combined = combine(partials)
    np.testing.assert_array_equal(combined.units, one.units)
    assert combined.units_in == one.units_in and combined.dropped == one.dropped
    if one.sums is not None:
        assert combined.sums is not None
        np.testing.assert_allclose(combined.sums, one.sums, rtol=1e-12)
