"""opal worker start"""

from __future__ import annotations

import click

from opal.cli._app import App, pass_app


@click.group("worker")
def worker() -> None:
    """Run worker nodes next to the data."""


@worker.command("start")
@click.option("--dataset", required=True, help="Dataset whose queue this worker serves.")
@click.option("--key", default=None, help="Operator key that signs this worker's ledger entries.")
@click.option("--concurrency", type=int, default=1, show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@pass_app
def start(app: App, dataset: str, key: str | None, concurrency: int, loglevel: str) -> None:
    """Serve DATASET's run queue (foreground; stop with Ctrl-C or SIGTERM)."""
    from opal.worker.service import start_worker

    start_worker(app.node, dataset=dataset, key=key, concurrency=concurrency, loglevel=loglevel)


COMMANDS = [worker]
