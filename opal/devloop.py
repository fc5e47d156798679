"""The statistician's dev loop: static checks and a local test run through the
same sandbox and release gate a worker uses, on data the caller already holds.
No budget is spent and nothing is written to the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opal.bundle.registry import Bundle
from opal.data.catalog import SCHEMAS, default_policy, read_schema
from opal.errors import BadInputError
from opal.release.policy import ReleasePolicy

__all__ = ["check_bundle", "test_bundle"]


def check_bundle(folder: Path) -> Bundle:
    """Manifest, parameter schema and compile policy, without data. Raises on the first problem."""
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
    check_source(bundle.source, filename="algorithm.py", entrypoint=bundle.manifest.entrypoint)
    return bundle


def test_bundle(
    folder: Path,
    *,
    dataset: Path,
    params: Any,
    epsilon: float | None = None,
    policy: ReleasePolicy | None = None,
) -> dict[str, Any]:
    from opal.release import release
    from opal.release.contributions import declared_columns
    from opal.sandbox import Runtime

    bundle = check_bundle(folder)
    schema = SCHEMAS[bundle.manifest.dataset]
    arrow_schema, _ = read_schema(dataset)
    schema.check(arrow_schema, where=str(dataset))
    bundle.manifest.validate_params(params)
    policy = policy or default_policy()
    eps = policy.default_epsilon if epsilon is None else epsilon
    with Runtime(tables={schema.name: dataset}) as runtime:
        contributions = runtime.run(
            source=bundle.source,
            entrypoint=bundle.manifest.entrypoint,
            params=params,
            columns=declared_columns(bundle.manifest.privacy),
        )
        getter = getattr(runtime, "units", None)
        if callable(getter):
            units = getter(schema.unit)
        else:
            import pyarrow.parquet as pq

            units = pq.read_table(dataset, columns=[schema.unit]).column(0).to_pandas()
    released = release(contributions, privacy=bundle.manifest.privacy, policy=policy, epsilon=eps, known_units=units)
    return dict(
        released.to_dict(),
        bundle={"name": bundle.manifest.name, "version": bundle.manifest.version, "digest": bundle.digest},
    )
