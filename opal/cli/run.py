"""opal run, opal runs list/show/result/cancel"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from opal.cli._app import App, check_out, console, emit_json, err_console, pass_app
from opal.cli._render import parse_params, render_release
from opal.errors import error_from_dict

if TYPE_CHECKING:
    from opal.runs.records import RunRecord


@click.command("run")
@click.argument("algorithm")
@click.option("--dataset", required=True)
@click.option("--params", default=None, help="Run parameters as JSON.")
@click.option("--epsilon", type=float, default=None, help="ε to spend (default: the dataset policy's).")
@click.option("--key", default=None, help="Statistician key that signs the request.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the outcome (default), or print the run id at once.")
@click.option("--timeout", type=float, default=600.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def run(app: App, algorithm: str, dataset: str, params: str | None, epsilon: float | None,
        key: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Request a run of ALGORITHM (NAME, NAME@VERSION or digest) on DATASET."""
    import time

    from opal.runs.results import submit

    node = app.node
    signer = node.keyring.signer_for(key, "statistician")
    t0 = time.monotonic()
    run_id = ""

    def requested(record: RunRecord) -> None:
        nonlocal run_id
        run_id = record.run_id
        if wait and not as_json:
            err_console.print(f"run {run_id}: requested {record.algorithm} on {dataset} (ε={record.epsilon:g})")

    def progress(state: str) -> None:
        err_console.print(f"run {run_id}: {state} ({time.monotonic() - t0:.1f} s)")

    def hint(text: str) -> None:
        err_console.print(f"run {run_id}: waiting: {text}")

    record = submit(node, algorithm=algorithm, dataset=dataset, params=parse_params(params), epsilon=epsilon,
                    signer=signer, wait=wait, timeout=timeout, on_requested=requested,
                    on_state=None if as_json else progress, on_hint=hint)
    if not wait:
        if as_json:
            emit_json({"run_id": record.run_id, "state": record.state})
        else:
            click.echo(record.run_id)
        return
    if as_json:
        emit_json(record.to_dict())
    elif record.state == "released" and record.result is not None:
        render_release(record.result, title=f"{record.algorithm} on {dataset}", cached_from=record.cached_from)
    if record.state != "released" and record.error:
        raise error_from_dict(record.error)


@click.group("runs")
def runs() -> None:
    """Follow runs."""


@runs.command("list")
@click.option("--dataset", default=None)
@click.option("--state", default=None)
@click.option("--limit", type=int, default=50)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_(app: App, dataset: str | None, state: str | None, limit: int, as_json: bool) -> None:
    from opal.runs import list_runs

    items = list_runs(app.node, dataset=dataset, state=state, limit=limit)
    if as_json:
        emit_json([r.to_dict(with_result=False) for r in items])
        return
    from rich.table import Table

    table = Table("run id", "algorithm", "dataset", "requester", "ε", "state", "updated")
    for r in items:
        table.add_row(r.run_id, r.algorithm, r.dataset, r.requester, f"{r.epsilon:g}", r.state, r.updated)
    console.print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, run_id: str, as_json: bool) -> None:
    """A run: what was asked, its state and, once released, the table with each cell's
    noise scale and 95 % interval."""
    from opal.runs import get_run

    r = get_run(app.node, run_id)
    if as_json:
        emit_json(r.to_dict(with_result=True))
        return
    console.print(f"run {r.run_id}: {r.algorithm} on {r.dataset}, ε={r.epsilon:g}, {r.state} ({r.updated})")
    console.print(f"  requested by {r.requester} on {r.created}, params {r.params}")
    if r.error:
        console.print(f"  {r.error.get('type')}: {r.error.get('message')}")
    if r.state == "released" and r.result is not None:
        render_release(r.result, title=f"{r.algorithm} on {r.dataset}", cached_from=r.cached_from, max_rows=10**9)


@runs.command("result")
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "json"]), default=None,
              help="The released table alone (one row per cell: value, noise_scale, ci_low, ci_high, suppressed); "
              "to --out FILE, or stdout (csv, json).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="With --format: the table; with --html: the page; else the result document (table + receipt).")
@click.option("--html", "as_html", is_flag=True,
              help="A self-contained page: the table, a plot of values with their intervals, the receipt's status.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def result(app: App, run_id: str, fmt: str | None, out: str | None, as_html: bool, as_json: bool) -> None:
    """The released table of a finished run, with its ledger receipt."""
    import json
    import sys

    check_out(out)
    from pathlib import Path

    from opal.errors import BadInputError
    from opal.runs import get_run
    from opal.runs.receipts import result_document
    from opal.runs.results import table_bytes

    if sum((fmt is not None, as_html, as_json)) > 1:
        raise BadInputError("choose one of --format, --html and --json")
    r = get_run(app.node, run_id)
    if r.state != "released" and r.error:
        raise error_from_dict(r.error)
    if fmt is not None:
        doc = result_document(app.node, run_id, require_receipt=False)
        data = table_bytes(doc["release"], fmt)
        if out:
            Path(out).write_bytes(data)
            err_console.print(f"wrote the released table of run {run_id} ({fmt}) to {out}")
        elif fmt == "parquet":
            raise BadInputError("--format parquet writes a binary file: add --out FILE")
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return
    doc = result_document(app.node, run_id, require_receipt=out is not None or as_html)
    if as_html:
        from opal.report.result_page import result_page

        text = result_page(doc)
        if out:
            Path(out).write_text(text, encoding="utf-8")
            err_console.print(f"wrote the result page of run {run_id} to {out}")
        else:
            click.echo(text, nl=False)
        return
    if out:
        Path(out).write_text(json.dumps(doc, indent=2))
    if as_json:
        emit_json(doc)
        return
    render_release(doc["release"], title=f"{r.algorithm} on {r.dataset}", cached_from=r.cached_from)
    console.print(f"ledger entry {doc['ledger_index']}, result digest {doc['result_digest'][:16]}…"
                  + (f"; result document with receipt written to {out}" if out else ""))


@runs.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--log-key", "log_keys", multiple=True,
              help="Key id(s) of the log operator you trust (pin it; default: the key the receipt proves).")
@click.option("--json", "as_json", is_flag=True)
def verify(file: str, log_keys: tuple[str, ...], as_json: bool) -> None:
    """Check a result document offline: the table is the one an approved run released."""
    import json
    from pathlib import Path

    from opal.errors import BadInputError
    from opal.runs.receipts import verify_result_document

    try:
        doc = json.loads(Path(file).read_text())
    except (OSError, json.JSONDecodeError):
        raise BadInputError(f"{file} is not a readable JSON result document (from opal runs result --out)") from None
    summary = verify_result_document(doc, trusted_log_keys=set(log_keys) if log_keys else None)
    if as_json:
        emit_json(summary)
    else:
        console.print(
            f"ok: {summary['algorithm']} run {summary['run_id']} released this table "
            f"(digest {summary['result_digest'][:16]}…), recorded at ledger entry {summary['ledger_index']} "
            f"and proven in the checkpoint of size {summary['checkpoint_size']} "
            f"signed by {summary['checkpoint_signer'][:16]}…"
        )


@runs.command("decisions")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def decisions(app: App, run_id: str, as_json: bool) -> None:
    """Operator view of a release: the run's true outcome (did the algorithm
    raise, hit a limit, return a malformed table?) and what the gate dropped.

    These are exact facts about the data, so they never reach the requester,
    who gets an ordinary noisy release either way; the ledger holds their
    digest (operator_outcome_digest, decisions_digest).
    """
    from opal.runs.records import run_decisions

    full = run_decisions(app.node, run_id)
    if as_json:
        emit_json({k: v for k, v in full.items() if k != "table"})
        return
    outcome = full.get("run_outcome") or {"outcome": "ok"}
    console.print(f"run {run_id}: {full.get('cells_released')} cell(s) released, "
                  f"{full.get('cells_suppressed')} suppressed (decisions digest "
                  f"{str(full.get('decisions_digest'))[:16]}… is in the ledger)")
    line = f"  algorithm outcome: {outcome.get('outcome')}"
    if outcome.get("error_type"):
        line += f" ({outcome['error_type']}"
        line += f", exit {outcome['exit_code']})" if outcome.get("exit_code") is not None else ")"
    console.print(line)
    if outcome.get("message"):
        console.print(f"  {outcome['message']}")
    diagnostics = full.get("diagnostics") or {}
    for reason, n in sorted((diagnostics.get("rows_dropped") or {}).items()):
        console.print(f"  {n:>6} contribution row(s) dropped: {reason}")


@runs.command("cancel")
@click.argument("run_id")
@click.option("--key", default=None, help="The statistician key that requested the run.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def cancel(app: App, run_id: str, key: str | None, as_json: bool) -> None:
    """Cancel a run that has no outcome yet; its reserved budget is returned."""
    from opal.runs.cancel import cancel_run

    signer = app.node.keyring.signer_for(key, "statistician")
    r = cancel_run(app.node, run_id, signer=signer)
    if as_json:
        emit_json(r.to_dict(with_result=False))
    else:
        console.print(f"run {r.run_id}: cancelled")


COMMANDS = [run, runs]
