"""Run requests and their records: what a statistician asks for and what came of it."""

from opal.runs.records import RunRecord, get_run, list_runs
from opal.runs.request import request_run, resolve_bundle

__all__ = ["RunRecord", "get_run", "list_runs", "request_run", "resolve_bundle"]
