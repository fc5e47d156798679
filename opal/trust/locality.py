"""The leave-one-out unit-locality probe reviewers run before they sign.

What reviewers sign (DESIGN "Algorithm bundle"): a unit's contributions
depend only on that unit's own rows. The platform bounds each unit's
contributions, but only locality makes that bound the sensitivity: an
algorithm whose output for subscriber A moves when subscriber B is removed
(ranks, medians, "the busiest region", cross-unit joins) can carry B's data
in A's rows. The probe makes a break visible: it runs the algorithm on
synthetic data once in full and once without each of a sample of units (at
least 50), in the real sandbox, with one fixed set of pseudonyms so every
other unit keeps its id, and counts the other units whose rows changed.

It can show a break, never prove its absence: data-dependent code paths the
synthetic data does not reach stay untested.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opal.errors import BadInputError, OpalError

__all__ = ["MIN_SAMPLE", "LocalityReport", "example_params", "probe", "probe_folder", "probe_synthetic"]

MIN_SAMPLE = 50


def _grouped(n: int) -> str:
    return f"{n:,}".replace(",", " ")


@dataclass(frozen=True, kw_only=True)
class LocalityReport:
    """How many other units' rows changed when one unit was removed."""

    sampled: int  # units removed, one at a time
    units: int  # units in the probe data
    worst: int  # most other units changed by removing one unit
    breaking: int  # sampled removals that changed another unit (or made the run fail)
    failures: int  # removals after which the algorithm raised
    skipped: str | None = None

    @property
    def local(self) -> bool:
        return self.skipped is None and self.breaking == 0

    @property
    def summary(self) -> str:
        if self.skipped is not None:
            return f"locality probe skipped: {self.skipped}"
        if self.local:
            return (
                f"unit-local: removing each of {self.sampled} sampled subscribers (of "
                f"{_grouped(self.units)}) changed no other subscriber's rows"
            )
        text = (
            f"not unit-local: removing one subscriber changed {_grouped(self.worst)} other "
            f"subscribers' rows ({self.breaking} of {self.sampled} removals changed others)"
        )
        if self.failures:
            text += f"; {self.failures} removal(s) made the algorithm fail"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "local": self.local,
            "sampled": self.sampled,
            "units": self.units,
            "worst": self.worst,
            "breaking": self.breaking,
            "failures": self.failures,
            "skipped": self.skipped,
            "summary": self.summary,
        }


def _per_unit(frame: Any, unit: str) -> Any:
    """unit → order-free fingerprint of its rows (sum and count of row hashes)."""
    import pandas as pd

    if unit not in frame.columns:
        return pd.DataFrame(columns=["h", "n"])
    rest = frame.drop(columns=[unit])
    rows = pd.util.hash_pandas_object(rest.astype(str), index=False) if len(rest.columns) else pd.Series(
        0, index=frame.index, dtype="uint64"
    )
    keyed = pd.DataFrame({"u": frame[unit].to_numpy(), "h": rows.to_numpy(dtype="uint64")})
    return keyed.groupby("u").agg(h=("h", "sum"), n=("h", "size"))


def probe(
    runtime: Any,
    *,
    source: str,
    entrypoint: str,
    params: Any,
    table: str,
    column: str,
    sample: int = MIN_SAMPLE,
    categorical: dict[str, Any] | None = None,
) -> LocalityReport:
    """Leave-one-out on ``runtime``'s resident (synthetic) table.

    Raises whatever the full run raises (the algorithm must run on the data
    before its locality can be probed).
    """
    import numpy as np

    from opal.sandbox.pseudonyms import for_run, pseudonym_at

    seed = os.urandom(32)
    count = runtime.unit_count(column, table=table)
    spec = for_run(table=table, column=column, seed=seed)
    base = _per_unit(
        runtime.run(source=source, entrypoint=entrypoint, params=params, pseudonyms=spec, categorical=categorical),
        column,
    )
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "big"))  # which units, not noise
    chosen = rng.choice(count, size=min(max(sample, MIN_SAMPLE), count), replace=False)
    worst = breaking = failures = 0
    for index in chosen.tolist():
        removed = pseudonym_at(spec, index, count=count)
        try:
            out = runtime.run(
                source=source, entrypoint=entrypoint, params=params, categorical=categorical,
                pseudonyms=for_run(table=table, column=column, seed=seed, drop=[index]),
            )
        except OpalError:
            failures += 1
            breaking += 1
            worst = max(worst, count - 1)
            continue
        after = _per_unit(out, column)
        others = base.drop(index=[removed], errors="ignore")
        after = after.drop(index=[removed], errors="ignore")
        joined = others.join(after, how="outer", suffixes=("_0", "_1"))
        changed = int(((joined["h_0"] != joined["h_1"]) | (joined["n_0"] != joined["n_1"])).sum())
        if changed:
            breaking += 1
            worst = max(worst, changed)
    return LocalityReport(sampled=len(chosen), units=count, worst=worst, breaking=breaking, failures=failures)


def example_params(schema: dict[str, Any]) -> dict[str, Any] | None:
    """Parameters for a probe run from the bundle's JSON Schema: each required
    property's default, first enum value or integer minimum; ``None`` when a
    required one has none of these."""
    props = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for name in schema.get("required") or []:
        prop = props.get(name) or {}
        if "default" in prop:
            out[name] = prop["default"]
        elif prop.get("enum"):
            out[name] = prop["enum"][0]
        elif prop.get("type") == "integer":
            out[name] = int(prop.get("minimum", 0))
        else:
            return None
    return out


def probe_folder(folder: Path, *, dataset: Path, params: Any, sample: int = MIN_SAMPLE) -> LocalityReport:
    """The probe for an unsigned bundle on a local (synthetic) dataset."""
    from opal.bundle.registry import Bundle

    return _probe_bundle(Bundle.from_folder(folder), dataset=dataset, params=params, sample=sample)


def probe_synthetic(bundle: Any, *, params: Any | None, sample: int = MIN_SAMPLE) -> LocalityReport:
    """The probe for a submitted bundle on fresh synthetic data (``opal algo review``)."""
    from opal.data.synth import synthesize

    params = params if params is not None else example_params(bundle.manifest.parameters)
    if params is None:
        return LocalityReport(
            sampled=0, units=0, worst=0, breaking=0, failures=0,
            skipped="a required parameter has no default; pass --params",
        )
    with tempfile.TemporaryDirectory(prefix="opal-locality-") as tmp:
        data = Path(tmp) / "cdr.parquet"
        synthesize(data, subscribers=300, days=14, seed=int.from_bytes(os.urandom(4), "big"))
        return _probe_bundle(bundle, dataset=data, params=params, sample=sample)


def _probe_bundle(bundle: Any, *, dataset: Path, params: Any, sample: int) -> LocalityReport:
    from opal.data.catalog import SCHEMAS
    from opal.sandbox import Runtime

    manifest = bundle.manifest
    if manifest.dataset not in SCHEMAS:
        raise BadInputError(f"dataset schema {manifest.dataset!r} is not known; known: {', '.join(SCHEMAS)}")
    manifest.validate_params(params)
    schema = SCHEMAS[manifest.dataset]
    read, categorical = manifest.read_map(), manifest.categorical_map()
    # the columns it reads, in the form it asks for, as a worker shows them
    with Runtime(tables={schema.name: dataset}, read=read, categorical=categorical) as runtime:
        return probe(
            runtime, source=bundle.source, entrypoint=manifest.entrypoint, params=params,
            table=schema.name, column=schema.unit, sample=sample, categorical=categorical,
        )
