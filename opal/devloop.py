"""The statistician's dev loop: static checks and a local test run through the
same sandbox and release gate a worker uses, on data the caller already holds.
No budget is spent and nothing is written to the ledger."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from opal.bundle.registry import Bundle
from opal.data.catalog import SCHEMAS, default_policy, read_schema
from opal.errors import BadInputError
from opal.release.domains import Label, check_cells, load_domains, sidecar_for
from opal.release.policy import ReleasePolicy

__all__ = ["check_bundle", "dataset_domains", "test_bundle"]


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
    check_source(bundle.source, filename="algorithm.py", entrypoint=bundle.manifest.entrypoint)
    literal = math.prod(len(g.values) for g in bundle.manifest.privacy.groups.values() if g.dataset is None)
    check_cells(literal, (policy or default_policy()).max_cells)
    return bundle


def dataset_domains(dataset: Path, domains: Path | None = None) -> dict[str, tuple[Label, ...]]:
    """The public domains of a local dataset: ``domains`` if given, else its
    sidecar ``STEM.domains.toml`` if present, else none."""
    if domains is not None:
        return load_domains(domains)
    sidecar = sidecar_for(dataset)
    return load_domains(sidecar) if sidecar.is_file() else {}


def test_bundle(
    folder: Path,
    *,
    dataset: Path,
    params: Any,
    epsilon: float | None = None,
    policy: ReleasePolicy | None = None,
    domains: Path | None = None,
) -> dict[str, Any]:
    """Run the bundle on ``dataset`` through the sandbox (on per-run pseudonyms)
    and the gate, strict: on the caller's own data every problem is shown."""
    from opal.release import release
    from opal.release.contributions import declared_columns
    from opal.release.domains import cell_count, resolve
    from opal.sandbox import Runtime
    from opal.sandbox.params import run_check_params
    from opal.sandbox.pseudonyms import run_pseudonymised

    policy = policy or default_policy()
    bundle = check_bundle(folder, policy=policy)
    schema = SCHEMAS[bundle.manifest.dataset]
    arrow_schema, _ = read_schema(dataset)
    schema.check(arrow_schema, where=str(dataset))
    bundle.manifest.validate_params(params)
    resolved = resolve(bundle.manifest.privacy.groups, dataset_domains(dataset, domains))
    check_cells(cell_count(resolved), policy.max_cells)
    eps = policy.check_epsilon(policy.default_epsilon if epsilon is None else epsilon)
    with Runtime(tables={schema.name: dataset}) as runtime:
        run_check_params(runtime, source=bundle.source, params=params, table=schema.name, column=schema.unit)
        contributions, units = run_pseudonymised(
            runtime,
            table=schema.name,
            column=schema.unit,
            source=bundle.source,
            entrypoint=bundle.manifest.entrypoint,
            params=params,
            columns=declared_columns(bundle.manifest.privacy),
        )
    released = release(
        contributions,
        privacy=bundle.manifest.privacy,
        domains=resolved,
        policy=policy,
        epsilon=eps,
        known_units=units,
        strict=True,
    )
    return dict(
        released.to_dict(),
        bundle={"name": bundle.manifest.name, "version": bundle.manifest.version, "digest": bundle.digest},
    )
