"""The statistician's dev loop: static checks and a local test run through the
same sandbox and release gate a worker uses, on data the caller already holds.
No budget is spent and nothing is written to the ledger."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opal.bundle.registry import Bundle
from opal.data.catalog import SCHEMAS, default_policy, read_schema
from opal.errors import BadInputError
from opal.release.domains import Label, check_cells, load_domains, sidecar_for
from opal.release.policy import ReleasePolicy

if TYPE_CHECKING:
    from opal.release.bounding import BoundedAggregate

__all__ = ["check_bundle", "dataset_domains", "dataset_files", "local_aggregate", "read_warnings", "test_bundle"]


def check_bundle(folder: Path, *, policy: ReleasePolicy | None = None) -> Bundle:
    """Manifest, parameter schema, compile policy and the size of the declared
    domains, without data. Raises on the first problem.

    Domains taken from a dataset are unknown here; the literal ones (ranges,
    values) must already fit the policy's ``max_cells`` (default policy).
    """
    from opal.sandbox import check_source

    bundle = Bundle.from_folder(folder)
    if bundle.manifest.dataset not in SCHEMAS:
        raise BadInputError(
            f"{folder}/opal.toml: dataset {bundle.manifest.dataset!r} is not a known schema; "
            f"known: {', '.join(SCHEMAS)}"
        )
    if bundle.manifest.privacy.unit != SCHEMAS[bundle.manifest.dataset].unit:
        raise BadInputError(
            f"{folder}/opal.toml: privacy.unit {bundle.manifest.privacy.unit!r} is not the privacy unit "
            f"{SCHEMAS[bundle.manifest.dataset].unit!r} of schema {bundle.manifest.dataset!r}"
        )
    bundle.manifest.check_reads(SCHEMAS[bundle.manifest.dataset].columns,
                                dataset=f"schema {bundle.manifest.dataset!r}")
    check_source(bundle.source, filename="algorithm.py", entrypoint=bundle.manifest.entrypoint)
    literal = math.prod(len(g.values) for g in bundle.manifest.privacy.groups.values() if g.dataset is None)
    check_cells(literal, (policy or default_policy()).max_cells)
    return bundle


def read_warnings(bundle: Bundle) -> list[str]:
    """Columns of the bundle's schema that its source names as a string but its
    ``reads`` leaves out, one line each (``algorithm.py:LINE …``).

    A hint, not a check: a name can be built at run time, and a string can be
    an output column's name. But a column left out of ``reads`` is not in the
    table the sandbox shows, so on a worker such a run raises ``KeyError`` and
    releases an empty (noisy) table while its ε is spent: worth saying before
    anything is submitted.
    """
    import ast

    reads = bundle.manifest.reads
    schema = SCHEMAS.get(bundle.manifest.dataset)
    if reads is None or schema is None:
        return []
    try:
        tree = ast.parse(bundle.source)
    except SyntaxError:
        return []
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in schema.columns
                and node.value not in reads):
            found[node.value] = min(found.get(node.value, node.lineno), node.lineno)
    return [
        f"algorithm.py:{line} names column {name!r}, which reads does not list: the sandbox will not show it "
        "(add it to reads in opal.toml if the algorithm reads it)"
        for name, line in sorted(found.items(), key=lambda item: item[1])
    ]


def dataset_domains(dataset: Path, domains: Path | None = None) -> dict[str, tuple[Label, ...]]:
    """The public domains of a local dataset: ``domains`` if given, else its
    sidecar ``STEM.domains.toml`` if present, else none."""
    if domains is not None:
        return load_domains(domains)
    sidecar = sidecar_for(dataset)
    return load_domains(sidecar) if sidecar.is_file() else {}


def dataset_files(dataset: Path, *, schema: str) -> tuple[Path, ...]:
    """The files of a local dataset, schema-checked: the file itself, or every
    partition of a partitioned directory (``opal dataset partition``) in order.

    A directory is held to the rules a registered one is: partitioned by the
    schema's privacy unit, each unit in one partition only.

    Raises:
        BadInputError: an unreadable file or directory, columns that do not
            match the schema, a directory partitioned by another column or
            with a unit in two partitions.
    """
    from opal.data.partition import is_partitioned, read_partitioned

    declared = SCHEMAS[schema]
    if not dataset.is_dir():
        arrow_schema, _ = read_schema(dataset)
        declared.check(arrow_schema, where=str(dataset))
        return (dataset,)
    if not is_partitioned(dataset):
        raise BadInputError(
            f"{dataset} is a directory but not a partitioned dataset; pass a .parquet or .csv file, "
            "or a directory made by opal dataset partition"
        )
    parted = read_partitioned(dataset)
    if parted.unit != declared.unit:
        raise BadInputError(
            f"{dataset} is partitioned by {parted.unit!r}, but schema {schema!r} protects {declared.unit!r}; "
            "partition it by the privacy unit"
        )
    for file in parted.files:
        arrow_schema, _ = read_schema(file)
        declared.check(arrow_schema, where=str(file))
    parted.check_disjoint()
    return parted.files


def local_aggregate(
    bundle: Bundle,
    *,
    files: tuple[Path, ...],
    params: Any,
    domains: dict[str, tuple[Label, ...]],
) -> BoundedAggregate:
    """The pre-noise aggregate of ``bundle`` on ``files`` (a file, or the
    partitions of one dataset), strict: the first half of the gate.

    Partition by partition exactly as a worker's partition tasks do: one
    sandbox runtime per partition (started, run, stopped: one partition in
    memory at a time), its own per-run pseudonyms, the unit check and
    per-unit bounding on that partition alone (``gate.partial_aggregate``),
    then the partials added (``bounding.combine``). One file is one partial.
    """
    from opal.release.bounding import combine
    from opal.release.contributions import declared_columns
    from opal.release.gate import partial_aggregate
    from opal.sandbox import Runtime
    from opal.sandbox.params import run_check_params
    from opal.sandbox.pseudonyms import run_pseudonymised

    manifest = bundle.manifest
    schema = SCHEMAS[manifest.dataset]
    partials = []
    read, categorical = manifest.read_map(), manifest.categorical_map()
    for index, file in enumerate(files):
        with Runtime(tables={schema.name: file}, read=read, categorical=categorical) as runtime:
            if index == 0:  # reads no data: once, as the worker's run task does (on the first partition)
                run_check_params(runtime, source=bundle.source, params=params, table=schema.name,
                                 column=schema.unit)
            contributions, units = run_pseudonymised(
                runtime,
                table=schema.name,
                column=schema.unit,
                source=bundle.source,
                entrypoint=manifest.entrypoint,
                params=params,
                columns=declared_columns(manifest.privacy),
                read=read,
                categorical=categorical,
            )
        partials.append(partial_aggregate(
            contributions, privacy=manifest.privacy, domains=domains, known_units=units, strict=True
        ))
        del contributions
    return partials[0] if len(partials) == 1 else combine(partials)


def test_bundle(
    folder: Path,
    *,
    dataset: Path,
    params: Any,
    epsilon: float | None = None,
    policy: ReleasePolicy | None = None,
    domains: Path | None = None,
) -> dict[str, Any]:
    """Run the bundle on ``dataset`` (a file, or a partitioned directory:
    partition by partition, as a worker would) through the sandbox (on per-run
    pseudonyms) and the gate, strict: on the caller's own data every problem
    is shown. Noise is drawn once, over the whole dataset."""
    from opal.release.domains import cell_count, resolve
    from opal.release.gate import release_aggregate

    policy = policy or default_policy()
    bundle = check_bundle(folder, policy=policy)
    files = dataset_files(dataset, schema=bundle.manifest.dataset)
    bundle.manifest.validate_params(params)
    resolved = resolve(bundle.manifest.privacy.groups, dataset_domains(dataset, domains))
    check_cells(cell_count(resolved), policy.max_cells)
    eps = policy.check_epsilon(policy.default_epsilon if epsilon is None else epsilon)
    agg = local_aggregate(bundle, files=files, params=params, domains=resolved)
    released = release_aggregate(agg, privacy=bundle.manifest.privacy, domains=resolved, policy=policy, epsilon=eps)
    return dict(
        released.to_dict(),
        bundle={"name": bundle.manifest.name, "version": bundle.manifest.version, "digest": bundle.digest},
    )
