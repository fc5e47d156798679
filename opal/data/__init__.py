"""Datasets: the CDR schema and the synthetic CDR generator."""

from opal.data.synth import CDR_UNIT, Shock, SynthSummary, cdr_schema, synthesize
from opal.data.world import REGIONS, Region

__all__ = ["CDR_UNIT", "REGIONS", "Region", "Shock", "SynthSummary", "cdr_schema", "synthesize"]
