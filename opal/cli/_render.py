"""Rendering released tables and run records for people."""

from __future__ import annotations

from typing import Any

from opal.cli._app import console

__all__ = ["render_release", "parse_params"]


def render_release(result: dict[str, Any], *, title: str = "released", max_rows: int = 40,
                   cached_from: str | None = None, local: bool = False) -> None:
    """The released table and one line on what it cost. ``local``: an ``opal
    algo test`` on the caller's own data, where ε is the noise level used and
    nothing is spent."""
    from rich.table import Table

    table_doc = result.get("table") or {"columns": [], "rows": []}
    columns = list(table_doc.get("columns", []))
    rows = list(table_doc.get("rows", []))
    table = Table(*columns, title=f"{title}: {len(rows)} cell(s)")
    for row in rows[:max_rows]:
        table.add_row(*["" if v is None else (f"{v:,.2f}" if isinstance(v, float) else str(v)) for v in row])
    if len(rows) > max_rows:
        table.caption = f"… {len(rows) - max_rows} more (use --json for all)"
    console.print(table)
    mech = result.get("mechanism") or {}
    if local:
        cost = f"ε {result.get('epsilon', '?')} (noise as a run would add; nothing spent)"
    else:
        cost = "ε spent " + ("0 (served from the cache)" if cached_from else str(result.get("epsilon", "?")))
    line = f"cells released: {result.get('cells_released', len(rows))}; {cost}"
    if "cells_suppressed" in result:
        line += f"; suppressed: {result['cells_suppressed']}"
    if mech.get("min_units_per_cell") is not None:
        line += f" (noisy unit count below {mech['min_units_per_cell']})"
    console.print(line)
    console.print("each value: noise_scale and 95 % interval ci_low..ci_high; suppressed cells have no value")
    if cached_from:
        console.print(f"served from the cache of run {cached_from} (no new noise, no budget spent)")


def parse_params(text: str | None) -> Any:
    import json

    from opal.errors import BadInputError

    if text is None:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(
            f"--params is not valid JSON ({exc.msg} at column {exc.colno}); e.g. '{{\"start_day\": 0}}'"
        ) from None
