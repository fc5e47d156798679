"""opal ledger verify/show"""

from __future__ import annotations

import click
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from opal.cli._app import App, console, emit_json, err_console, pass_app


@click.group("ledger")
def ledger() -> None:
    """Audit the governance ledger."""


@ledger.command("verify")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def verify(app: App, as_json: bool) -> None:
    """Re-derive every leaf, the root and every signature; exit 7 on tampering."""
    with Progress(TextColumn("verifying ledger"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=err_console, transient=True, disable=as_json) as bar:
        task = bar.add_task("verify", total=None)
        report = app.node.ledger.verify(progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        emit_json(report.to_dict())
        return
    console.print(
        f"ledger ok: {report.size} entries, {report.signatures} signatures by {report.keys} keys, "
        f"{report.checkpoints} signed checkpoint(s), {report.runs} run outcome(s) checked; "
        f"root {report.root[:16]}…"
    )


@ledger.command("show")
@click.option("--type", "type_", default=None)
@click.option("--actor", default=None, help="Actor key id.")
@click.option("--algorithm", default=None)
@click.option("--since", default=None)
@click.option("--until", default=None)
@click.option("--limit", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, type_: str | None, actor: str | None, algorithm: str | None, since: str | None,
         until: str | None, limit: int | None, as_json: bool) -> None:
    """List ledger entries."""
    entries = app.node.ledger.entries(type=type_, actor=actor, subject=algorithm, since=since, until=until, limit=limit)
    if as_json:
        emit_json([e.to_dict() for e in entries])
        return
    names = {k.key_id: k.name for k in app.node.keyring.all()}
    table = Table("#", "time", "type", "actor", "about")
    for e in entries:
        about = e.body.get("run_id") or e.body.get("name") or e.body.get("dataset") or ""
        if e.type == "run_finished":
            about = f"{about} {e.body.get('outcome')}"
        table.add_row(str(e.index), e.time[:19], e.type, names.get(e.actor, e.actor[:12]), str(about))
    console.print(table)


COMMANDS = [ledger]
