"""The ``opal`` helper API an algorithm may import (``import opal``).

Inside the sandbox ``import opal`` resolves to a read-only facade holding
exactly these functions (vetted platform code, run on the algorithm's
behalf); outside it, running an algorithm directly, the same functions come
from this module. They never aggregate across units: they filter rows and
pick one value per unit, so their output is still per-unit contributions.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "require_columns",
    "between_days",
    "night_hours",
    "night_events",
    "modal_region",
    "NIGHT_START_HOUR",
    "NIGHT_END_HOUR",
]

NIGHT_START_HOUR = 20
NIGHT_END_HOUR = 7


def require_columns(frame: Any, *columns: str) -> None:
    """Raise KeyError if any of ``columns`` is missing (message names no data)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError("required column missing")


def between_days(frame: Any, params: dict[str, Any], column: str = "day") -> Any:
    """Rows whose ``column`` lies within params start_day..end_day (inclusive)."""
    return frame[frame[column].between(params["start_day"], params["end_day"])]


def night_hours(params: dict[str, Any]) -> tuple[int, int]:
    """(night start hour, night end hour) from params ``night_start_hour`` /
    ``night_end_hour``, default 20 and 7 (UTC; start inclusive, end exclusive)."""
    night_start = params.get("night_start_hour", NIGHT_START_HOUR)
    night_end = params.get("night_end_hour", NIGHT_END_HOUR)
    if night_start == night_end:
        raise ValueError("night_start_hour and night_end_hour must differ")
    return night_start, night_end


def night_events(cdr: Any, start_day: int, end_day: int, night_start: int, night_end: int) -> Any:
    """Events of days start_day..end_day whose hour is in the night
    [night_start, night_end), wrapping midnight when night_start > night_end."""
    window = cdr[cdr["day"].between(start_day, end_day)]
    hour = window["timestamp"].dt.hour
    if night_start > night_end:
        at_night = (hour >= night_start) | (hour < night_end)
    else:
        at_night = (hour >= night_start) & (hour < night_end)
    return window[at_night]


def modal_region(events: Any, keys: list[str]) -> Any:
    """Per ``keys`` (e.g. ["msisdn"] or ["msisdn", "day"]), the region with the
    most events; ties go to the alphabetically first region. Columns: keys + region."""
    counts = events.groupby(keys + ["region"]).size().reset_index(name="events")
    order = keys + ["events", "region"]
    ascending = [True] * len(keys) + [False, True]
    counts = counts.sort_values(order, ascending=ascending)
    return counts.drop_duplicates(keys)[keys + ["region"]]
