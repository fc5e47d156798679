"""opal worker start/status/recover/unit"""

from __future__ import annotations

import click
from rich.table import Table

from opal.cli._app import App, console, emit_json, err_console, pass_app


@click.group("worker")
def worker() -> None:
    """Run worker nodes next to the data."""


@worker.command("start")
@click.option("--dataset", required=True, help="Dataset whose queue this worker serves.")
@click.option("--key", default=None, help="Operator key that signs this worker's ledger entries.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--run-timeout", type=click.FloatRange(min=0.1), default=None,
              help="Wall-clock limit of one run in seconds (default: $OPAL_RUN_TIMEOUT or 600).")
@click.option("--memory", default=None,
              help="Memory for resident partitions, e.g. 8G (default: half the machine); "
                   "partitions beyond it are loaded per task.")
@click.option("--no-recover", is_flag=True, help="Do not recover lost runs before serving.")
@click.option("--loglevel", default="INFO", show_default=True)
@pass_app
def start(app: App, dataset: str, key: str | None, concurrency: int, run_timeout: float | None,
          memory: str | None, no_recover: bool, loglevel: str) -> None:
    """Serve DATASET's run queue (foreground; stop with Ctrl-C or SIGTERM)."""
    from opal.trust.governance import require_board_policy
    from opal.worker.service import start_worker

    require_board_policy(app.node)
    plaintext = app.node.keyring.plaintext_keys()
    if plaintext:
        err_console.print(
            f"warning: private key(s) {', '.join(plaintext)} are stored unencrypted on a node that serves "
            "real data; set OPAL_PASSPHRASE and create new keys (they are then encrypted at rest)"
        )

    from opal.worker.service import parse_memory

    start_worker(app.node, dataset=dataset, key=key, concurrency=concurrency, loglevel=loglevel,
                 timeout=run_timeout, recover_at_start=not no_recover,
                 memory=parse_memory(memory) if memory else None)


@worker.command("status")
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait for workers to answer.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def status(app: App, timeout: float, as_json: bool) -> None:
    """Live workers, their datasets, queue depths and runs in flight."""
    from opal.worker.status import status as get_status

    doc = get_status(app.node, timeout=timeout)
    if as_json:
        emit_json(doc)
        return
    table = Table("worker", "datasets", "concurrency", "in flight", "processed")
    for w in doc["workers"]:
        table.add_row(w["name"], ", ".join(w["datasets"]), str(w["concurrency"] or ""),
                      str(len(w["runs_in_flight"])), str(w["processed"]))
    console.print(table)
    for q in doc["queues"]:
        console.print(f"queue {q['queue']}: {q['depth']} waiting")
    console.print("runs: " + (", ".join(f"{k} {v}" for k, v in sorted(doc["runs"].items())) or "none"))


@worker.command("recover")
@click.option("--dataset", default=None, help="Only this dataset's runs.")
@click.option("--key", default=None, help="Operator key that signs any failure recorded.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def recover(app: App, dataset: str | None, key: str | None, as_json: bool) -> None:
    """Re-dispatch runs whose message or worker was lost; fail those out of attempts."""
    from opal.worker.recovery import recover as do_recover

    signer = app.node.keyring.signer_for(key, "operator")
    report = do_recover(app.node, signer=signer, dataset=dataset)
    if as_json:
        emit_json(report.to_dict())
        return
    console.print(
        f"re-dispatched {len(report.redispatched)}, fan-outs rescued {len(report.rescued)}, "
        f"failed {len(report.failed)}, in flight {len(report.in_flight)}, queued {len(report.queued)}"
    )


@worker.command("unit")
@click.option("--dataset", required=True, help="Dataset whose queue the worker serves.")
@click.option("--key", default=None, help="Operator key that signs the worker's ledger entries.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--user", default=None, help="System user the worker runs as (User=).")
@pass_app
def unit(app: App, dataset: str, key: str | None, concurrency: int, user: str | None) -> None:
    """Print a systemd unit that keeps DATASET's worker up (Restart=on-failure)."""
    from opal.data import catalog
    from opal.worker.unit import systemd_unit

    catalog.get(app.node, dataset)                     # an unknown dataset is refused now, not at boot
    app.node.keyring.signer_for(key, "operator")       # and so is a missing operator key
    click.echo(systemd_unit(home=app.node.home.root, dataset=dataset, key=key, concurrency=concurrency, user=user),
               nl=False)


COMMANDS = [worker]
