"""opal broker start/stop/status: the embedded Redis"""

from __future__ import annotations

import click

from opal.cli._app import App, console, pass_app


@click.group("broker")
def broker() -> None:
    """The embedded Redis broker (for one machine; production sets OPAL_BROKER_URL)."""


@broker.command("start")
@pass_app
def start(app: App) -> None:
    """Start a private Redis on a unix socket under OPAL_HOME."""
    from opal.worker.broker import EmbeddedRedis

    url = EmbeddedRedis(app.node.home).start()
    console.print(f"embedded Redis running at {url}")


@broker.command("stop")
@pass_app
def stop(app: App) -> None:
    """Stop the embedded Redis of this home."""
    from opal.worker.broker import EmbeddedRedis

    stopped = EmbeddedRedis(app.node.home).stop()
    console.print("embedded Redis stopped" if stopped else "embedded Redis was not running")


@broker.command("status")
@pass_app
def status(app: App) -> None:
    from opal.worker.broker import EmbeddedRedis

    b = EmbeddedRedis(app.node.home)
    console.print(f"embedded Redis {'running at ' + b.url if b.running() else 'not running'}")


COMMANDS = [broker]
