"""Rendering released tables and run records for people."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from opal.cli._app import console

__all__ = ["render_release", "parse_params"]


def render_release(result: dict[str, Any], *, title: str = "released", max_rows: int = 40) -> None:
    table_doc = result.get("table") or {"columns": [], "rows": []}
    columns = list(table_doc.get("columns", []))
    rows = list(table_doc.get("rows", []))
    table = Table(*columns, title=f"{title}: {len(rows)} cell(s)")
    for row in rows[:max_rows]:
        table.add_row(*["" if v is None else (f"{v:,.2f}" if isinstance(v, float) else str(v)) for v in row])
    if len(rows) > max_rows:
        table.caption = f"… {len(rows) - max_rows} more (use --json for all)"
    console.print(table)
    released = result.get("cells_released", len(rows))
    suppressed = result.get("cells_suppressed", 0)
    reasons: dict[str, int] = {}
    for d in result.get("decisions", []):
        if not d.get("released"):
            reasons[str(d.get("reason"))] = reasons.get(str(d.get("reason")), 0) + 1
    why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) if reasons else "none"
    console.print(f"cells released: {released}   cells suppressed: {suppressed} ({why})")
    if result.get("cached_from"):
        console.print(f"served from the cache of run {result['cached_from']} (no new noise, no budget spent)")


def parse_params(text: str | None) -> Any:
    import json

    from opal.errors import BadInputError

    if text is None:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"--params is not valid JSON ({exc.msg} at column {exc.colno}); e.g. '{{\"start_day\": 0}}'") from None
