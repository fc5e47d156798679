"""opal budget show"""

from __future__ import annotations

import click
from rich.table import Table

from opal.cli._app import App, console, emit_json, pass_app


@click.group("budget")
def budget() -> None:
    """The privacy budget of each dataset."""


@budget.command("show")
@click.option("--dataset", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, dataset: str | None, as_json: bool) -> None:
    """Spent, reserved and left ε, and who spent it."""
    from opal.release.budget import show as states

    items = states(app.node, dataset)
    if as_json:
        emit_json([s.to_dict() for s in items])
        return
    table = Table("dataset", "total ε", "spent", "reserved", "left", "spent by")
    for s in items:
        by = ", ".join(f"{x['requester']} {x['epsilon']:g} ({x['runs']} run(s))" for x in s.spenders)
        table.add_row(s.dataset, f"{s.total:g}", f"{s.spent:g}", f"{s.reserved:g}", f"{s.left:g}", by)
    console.print(table)


COMMANDS = [budget]
