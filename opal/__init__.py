"""OPAL: Open Algorithms sandbox.

The algorithm travels to the data; only aggregated, noise-protected,
disclosure-checked results leave, and every step is written to a
tamper-evident ledger.

``import opal`` in an algorithm gives the vetted helper API
(``opal.helpers``); inside the sandbox it is a read-only facade of the same
functions.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time: `opal`'s start-up pays for every import
    from typing import Any

    from opal.helpers import between_days, distinct, modal_region, night_events, night_hours, require_columns, sum_by

__version__ = "0.1.0"
__all__ = [
    "__version__", "between_days", "distinct", "modal_region", "night_events", "night_hours", "require_columns",
    "sum_by",
]


def __getattr__(name: str) -> Any:
    # The helpers load on first use, so the CLI's start does not pay for them.
    if name in __all__:
        from opal import helpers

        return getattr(helpers, name)
    raise AttributeError(f"module 'opal' has no attribute {name!r}")
