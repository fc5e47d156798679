"""opal budget show/history"""

from __future__ import annotations

import click

from opal.cli._app import App, console, emit_json, pass_app


@click.group("budget")
def budget() -> None:
    """The privacy budget of each dataset."""


@budget.command("show")
@click.option("--dataset", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, dataset: str | None, as_json: bool) -> None:
    """Spent, reserved and left ε, who spent it, and which datasets share it (the
    budget belongs to the data: the same content under two names has one budget)."""
    from opal.release.budget import show as states

    items = states(app.node, dataset)
    if as_json:
        emit_json([s.to_dict() for s in items])
        return
    from rich.table import Table

    table = Table("dataset", "total ε", "spent", "reserved", "left", "spent by", "shared with (same data)")
    for s in items:
        by = ", ".join(f"{x['requester']} {x['epsilon']:g} ({x['runs']} run(s))" for x in s.spenders)
        table.add_row(s.dataset, f"{s.total:g}", f"{s.spent:g}", f"{s.reserved:g}", f"{s.left:g}", by,
                      ", ".join(s.shared_with))
    console.print(table)


@budget.command("history")
@click.option("--dataset", default=None, help="Only this dataset's charges.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def history(app: App, dataset: str | None, as_json: bool) -> None:
    """Every charge of ε, oldest first: who, which run and algorithm, ε, when, and the
    dataset's running total (from the signed run entries of the ledger)."""
    from opal.report.views import budget_history

    charges, _ = budget_history(app.node.ledger, dataset)
    if as_json:
        emit_json([c.to_dict() for c in charges])
        return
    from rich.table import Table

    table = Table("#", "time", "dataset", "requester", "algorithm", "run", "outcome", "ε", "running total")
    for c in charges:
        table.add_row(str(c.index), c.time[:19], c.dataset, c.requester_name, c.algorithm, c.run_id[:12],
                      c.outcome, f"{c.epsilon:g}", f"{c.total:g}")
    console.print(table)
    if not charges:
        console.print("no ε spent yet" + (f" on {dataset}" if dataset else ""))


COMMANDS = [budget]
