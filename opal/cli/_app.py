"""Shared CLI plumbing: the node in ``ctx.obj``, JSON output, rich console."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from opal.node import Node

__all__ = ["App", "pass_app", "emit_json", "console", "err_console", "check_out"]

console: Console
err_console: Console
_PIPE_WIDTH = 400


def __getattr__(name: str) -> Any:
    # The consoles (and rich) load when a command first asks for them, not
    # for --help or --version.
    if name in ("console", "err_console"):
        import sys

        from rich.console import Console

        # A terminal's own width; a pipe or file has none, so tables there are
        # never cut to rich's default 80 columns (COLUMNS still wins).
        out_width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else _PIPE_WIDTH
        err_width = None if sys.stderr.isatty() or "COLUMNS" in os.environ else _PIPE_WIDTH
        globals()["console"] = Console(highlight=False, soft_wrap=True, width=out_width)
        globals()["err_console"] = Console(stderr=True, highlight=False, soft_wrap=True, width=err_width)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class App:
    """What every command shares (``ctx.obj``): the home and the node opened lazily."""

    def __init__(self, home: str | None, debug: bool = False) -> None:
        self.home = home
        self.debug = debug

    @cached_property
    def node(self) -> Node:
        from opal.node import Node

        return Node.open(self.home)


pass_app = click.make_pass_decorator(App)


def emit_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def check_out(path: Path | str | None, option: str = "--out") -> None:
    """Refuse, before any work, an output file whose folder does not exist."""
    from opal.errors import BadInputError

    if path is None:
        return
    folder = Path(path).expanduser().absolute().parent
    if not folder.is_dir():
        raise BadInputError(f"{option} {path}: no folder {folder}; create it first")
