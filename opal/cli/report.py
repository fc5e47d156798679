"""opal report — the board's governance page."""

from __future__ import annotations

from pathlib import Path

import click

from opal.cli._app import App, check_out, console, emit_json, pass_app


@click.command("report")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The HTML file to write (one self-contained page: no network needed to view it).")
@click.option("--file", "export_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Build it offline from a ledger export (opal ledger export), verified first.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --file: the board-signed trust policy naming the log keys and witnesses.")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Your audit state (default: ~/.config/opal/audit/): with --file, the export must extend it.")
@click.option("--json", "as_json", is_flag=True, help="Also print the page's main figures as JSON.")
@pass_app
def report(app: App, out: Path, export_file: Path | None, policy_file: Path | None, state_file: Path | None,
           as_json: bool) -> None:
    """Write the governance report: budget, runs, refusals, algorithm versions and reviews,
    checkpoints and witnesses, trust policy; every figure from signed ledger content."""
    from opal.errors import BadInputError
    from opal.report import governance

    check_out(out)

    if export_file is not None:
        from opal.ledger.export import load_policy_file

        policy = load_policy_file(policy_file) if policy_file else None
        history, coverage = governance.from_export(export_file, policy=policy, state=state_file)
        diffs = None
    else:
        if policy_file is not None:
            raise BadInputError("--policy goes with --file EXPORT (online, the ledger's own policy chain is used)")
        history, coverage = governance.from_node(app.node, state=state_file)
        diffs = governance.node_diffs(app.node, history)
    governance.write_report(governance.render(history, coverage, diffs=diffs), out)
    if as_json:
        emit_json({"out": str(out), "covers": coverage.entries, **history.summary()})
        return
    cp = coverage.checkpoint
    console.print(
        f"wrote {out}: {len(history.runs)} run(s), {len(history.charges)} charge(s), "
        f"{len(history.versions)} algorithm version(s) from entries 0…{coverage.entries - 1}"
        + (f" (signed checkpoint of size {cp.size})" if cp else " (no signed checkpoint yet)")
    )


COMMANDS = [report]
