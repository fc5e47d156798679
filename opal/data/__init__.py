"""Datasets: the catalog, the CDR schema and the synthetic CDR generator.

The names below load on first use: ``from opal.data import catalog`` (every
run request) must not pay for pandas and the generator.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opal.data.synth import CDR_UNIT, Shock, SynthSummary, cdr_schema, synthesize
    from opal.data.world import REGIONS, Region

__all__ = ["CDR_UNIT", "REGIONS", "Region", "Shock", "SynthSummary", "cdr_schema", "synthesize"]
_HOME = {"REGIONS": "opal.data.world", "Region": "opal.data.world"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        return getattr(importlib.import_module(_HOME.get(name, "opal.data.synth")), name)
    raise AttributeError(f"module 'opal.data' has no attribute {name!r}")
