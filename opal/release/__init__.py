"""The release gate: per-unit contributions in, noise-protected and
disclosure-checked cells out.

``release()`` is the one entry point the run pipeline calls; the rest is
exposed so reviewers and tests can check each step on its own.
"""

from opal.release.bounding import BoundedAggregate, Sensitivity, bounded_aggregate, sensitivity
from opal.release.dominance import dominance_failures
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
    "dominance_failures",
    "release",
    "sensitivity",
]
