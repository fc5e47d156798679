"""A ready node for the benchmark and the worker tests: keys, a small CDR
dataset, and an approved ``spin_count`` bundle (distinct subscribers per
region, after an optional busy loop of ``spin`` iterations so fault tests can
catch a run in the middle).

Everything goes through the same library calls as the CLI: a board key signs
the trust policy naming every key's role, the bundle is submitted and approved
by two reviewers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opal.node import Node
from opal.release.policy import ReleasePolicy

__all__ = ["SPIN_BUNDLE", "Scenario", "build", "write_spin_bundle"]

SPIN_BUNDLE = "spin_count"

_MANIFEST = """\
name = "spin_count"
version = "1.0.0"
description = "Distinct subscribers per region, after an optional busy loop (tests, benchmarks)"
entrypoint = "contributions"
dataset = "cdr"

[privacy]
unit = "msisdn"
aggregation = "count"
max_groups_per_unit = 1

[privacy.groups]
region = "dataset"

[parameters]
type = "object"
additionalProperties = false

[parameters.properties.tag]
type = "integer"

[parameters.properties.spin]
type = "integer"
minimum = 0
"""

_SOURCE = '''\
def contributions(data, params):
    n = 0
    for i in range(params.get("spin", 0)):
        n += 1
    cdr = data.cdr
    return cdr[["msisdn", "region"]].drop_duplicates()
'''


def write_spin_bundle(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "opal.toml").write_text(_MANIFEST)
    (folder / "algorithm.py").write_text(_SOURCE)
    return folder


@dataclass(frozen=True)
class Scenario:
    node: Node
    dataset: str
    data: Path
    operator: str = "olga"
    statistician: str = "sam"


def build(
    home: Path,
    *,
    subscribers: int = 1000,
    days: int = 2,
    seed: int = 3,
    policy: ReleasePolicy | None = None,
    dataset: str = "demo",
) -> Scenario:
    """A fresh node in ``home`` with a ``subscribers × days × 5``-row dataset."""
    from opal.bundle.registry import Bundle
    from opal.data import catalog
    from opal.data.synth import synthesize
    from opal.trust.governance import init_policy
    from opal.trust.review import approve, submit

    node = Node.open(home)
    for name, role in (
        ("olga", "operator"), ("sam", "statistician"), ("rita", "reviewer"), ("ravi", "reviewer"), ("bea", "board"),
    ):
        node.keyring.new(name, role, node.ledger)
    init_policy(node, signers=[node.keyring.signer("bea")], board=["bea"])  # the board names every role
    data = home / "data" / "cdr.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    synthesize(data, subscribers=subscribers, days=days, seed=seed)
    catalog.register(node, dataset, data, schema="cdr", policy=policy, signer=node.keyring.signer("olga"))
    bundle = Bundle.from_folder(write_spin_bundle(home / "bundles" / SPIN_BUNDLE))
    submit(node, bundle, signer=node.keyring.signer("sam"))
    for reviewer in ("rita", "ravi"):
        approve(node, bundle.digest, signer=node.keyring.signer(reviewer))
    return Scenario(node=node, dataset=dataset, data=data)
