"""The ``opal`` command. Commands parse, call one library function, render."""

from __future__ import annotations

from typing import Any

import click

from opal import __version__
from opal.cli._app import App
from opal.cli._errors import guarded

__all__ = ["main", "cli"]


class OpalGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) if ctx.parent is None else False
        return guarded(lambda: super(OpalGroup, self).invoke(ctx), debug=debug)


@click.group(cls=OpalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="OPAL_HOME", type=click.Path(file_okay=False), default=None,
              help="State folder (keyring, registry, ledger, budget). Default: ./.opal or $OPAL_HOME.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.version_option(__version__, prog_name="opal")
@click.pass_context
def cli(ctx: click.Context, home: str | None, debug: bool) -> None:
    """OPAL: vetted algorithms travel to private data; only noise-protected aggregates leave."""
    ctx.obj = App(home=home, debug=debug)


def _register() -> None:
    from opal.cli import algo, broker, budget, dataset, demo, keys, ledger, run, trust, witness, worker

    for module in (keys, algo, trust, dataset, run, ledger, witness, budget, worker, broker, demo):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="opal")
