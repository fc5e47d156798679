"""Run requests and their records: what a statistician asks for and what came of it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opal.runs.records import RunRecord, get_run, list_runs
    from opal.runs.request import request_run, resolve_bundle

__all__ = ["RunRecord", "get_run", "list_runs", "request_run", "resolve_bundle"]

# Each name loads its module on first use: reading a run (opal runs list/show,
# the wait of opal run) does not import what requesting one needs.
_HOME = {
    "RunRecord": "opal.runs.records",
    "get_run": "opal.runs.records",
    "list_runs": "opal.runs.records",
    "request_run": "opal.runs.request",
    "resolve_bundle": "opal.runs.request",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'opal.runs' has no attribute {name!r}")
