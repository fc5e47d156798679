"""The ``opal`` command. Commands parse, call one library function, render."""

from __future__ import annotations

import importlib
from typing import Any

import click

from opal import __version__
from opal.cli._app import App
from opal.cli._errors import guarded

__all__ = ["main", "cli"]


# Every command: the module that defines it and its one-line help. Commands
# are imported only when invoked, so `opal --help`, `--version` and each verb
# load no more than they use (tests/cli checks this table against the modules).
COMMANDS: dict[str, tuple[str, str]] = {
    "algo": ("opal.cli.algo", "Write, check, test, submit and review algorithm bundles."),
    "broker": ("opal.cli.broker", "The embedded Redis broker (for one machine; production sets OPAL_BROKER_URL)."),
    "budget": ("opal.cli.budget", "The privacy budget of each dataset."),
    "cli-server": ("opal.cli.server", "Keep the CLI's imports warm, so short commands start in milliseconds."),
    "dataset": ("opal.cli.dataset", "Register datasets and make synthetic ones."),
    "demo": ("opal.cli.demo", "Run the whole story on the embedded default."),
    "keys": ("opal.cli.keys", "Ed25519 keys and their roles."),
    "ledger": ("opal.cli.ledger", "Audit the governance ledger."),
    "report": ("opal.cli.report", "The board's governance report: one self-contained HTML page."),
    "run": ("opal.cli.run", "Request a run of an algorithm on a dataset."),
    "runs": ("opal.cli.run", "Follow runs."),
    "trust": ("opal.cli.trust", "The board-signed trust policy."),
    "witness": ("opal.cli.witness", "Witness a log from your own home: your key, your memory of the log."),
    "worker": ("opal.cli.worker", "Run worker nodes next to the data."),
}


class OpalGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) if ctx.parent is None else False
        return guarded(lambda: super(OpalGroup, self).invoke(ctx), debug=debug)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        command: click.Command = next(c for c in module.COMMANDS if c.name == name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The short help from the table: listing the verbs imports none of them.
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=OpalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="OPAL_HOME", type=click.Path(file_okay=False), default=None,
              help="State folder (keyring, registry, ledger, budget). Default: ./.opal or $OPAL_HOME.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.version_option(__version__, prog_name="opal")
@click.pass_context
def cli(ctx: click.Context, home: str | None, debug: bool) -> None:
    """OPAL: vetted algorithms travel to private data; only noise-protected aggregates leave."""
    ctx.obj = App(home=home, debug=debug)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    try:
        cli(prog_name="opal")
    finally:
        # The command is done and its database closed: skip the collection of every
        # module's objects at interpreter exit (about 100 ms of CPU once Celery, kombu
        # and redis are loaded). Python does not promise finalizers at exit; atexit
        # handlers, weakref.finalize and the flush of stdout and stderr still run.
        import gc

        gc.freeze()
