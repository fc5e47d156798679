"""opal cli-server start/stop/status: one warm process that runs this user's short commands"""

from __future__ import annotations

import click

from opal.cli._app import console


@click.group("cli-server")
def cli_server() -> None:
    """Keep the CLI's imports loaded, so short commands (run, runs, budget, ledger, keys,
    trust, witness, report) start in milliseconds instead of a quarter of a second."""


@cli_server.command("start")
@click.option("--idle", type=float, default=3600.0, show_default=True,
              help="Seconds without a command after which the server leaves.")
def start(idle: float) -> None:
    """Start this user's CLI server (in the background) unless one runs."""
    from opal.cli._serverctl import start_server

    pid, path, already = start_server(idle=idle)
    if already:
        console.print(f"opal cli-server already running (pid {pid}) on {path}")
    else:
        console.print(f"opal cli-server running (pid {pid}) on {path}; it leaves after {idle:g} s idle, "
                      "when opal's code changes, or with opal cli-server stop")


@cli_server.command("stop")
def stop() -> None:
    """Stop this user's CLI server."""
    from opal.cli._serverctl import stop_server

    console.print("opal cli-server stopped" if stop_server() else "opal cli-server was not running")


@cli_server.command("status")
def status() -> None:
    from opal.cli._serverctl import ping

    info = ping()
    if info is None:
        console.print("opal cli-server not running (every command starts its own process)")
    elif info.get("stale"):
        console.print(f"opal cli-server (pid {info['pid']}) is stale: opal's code changed since it started; "
                      "it leaves at its next command (opal cli-server start replaces it)")
    else:
        console.print(f"opal cli-server running (pid {info['pid']}) for {info['uptime']:.0f} s, "
                      f"{info['served']} command(s) served, on {info['socket']}")


COMMANDS = [cli_server]
