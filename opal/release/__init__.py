"""The release gate: per-unit contributions in, one noisy row per cell of
the public group domains out.

``release()`` is the one entry point the run pipeline calls; the rest is
exposed so reviewers and tests can check each step on its own.

Names are imported lazily: the CLI reads ``opal.release.policy`` on every
command and should not pay for pandas and OpenDP unless a release happens.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opal.release.bounding import BoundedAggregate, Sensitivity, bounded_aggregate, sensitivity
    from opal.release.gate import CellDecision, Release, release
    from opal.release.policy import PrivacySpec, ReleasePolicy

__all__ = [
    "BoundedAggregate",
    "CellDecision",
    "PrivacySpec",
    "Release",
    "ReleasePolicy",
    "Sensitivity",
    "bounded_aggregate",
    "release",
    "sensitivity",
]

_HOME = {
    "BoundedAggregate": "bounding",
    "Sensitivity": "bounding",
    "bounded_aggregate": "bounding",
    "sensitivity": "bounding",
    "CellDecision": "gate",
    "Release": "gate",
    "release": "gate",
    "PrivacySpec": "policy",
    "ReleasePolicy": "policy",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'opal.release' has no attribute {name!r}")
    return getattr(import_module(f"opal.release.{module}"), name)
