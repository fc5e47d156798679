"""Shared CLI plumbing: the node in ``ctx.obj``, JSON output, rich console."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

if TYPE_CHECKING:
    from rich.console import Console

    from opal.node import Node

__all__ = ["App", "pass_app", "emit_json", "console", "err_console", "check_out", "rich_console"]

_PIPE_WIDTH = 400


_consoles: dict[bool, Console] = {}


def rich_console(*, stderr: bool = False) -> Console:
    """The rich Console itself, for rich objects that take one (``Progress``)."""
    made = _consoles.get(stderr)
    if made is None:
        import sys

        from rich.console import Console

        stream = sys.stderr if stderr else sys.stdout
        # A terminal's own width; a pipe or file has none, so tables there are
        # never cut to rich's default 80 columns (COLUMNS still wins).
        width = None if stream.isatty() or "COLUMNS" in os.environ else _PIPE_WIDTH
        made = _consoles[stderr] = Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)
    return made


class _LazyConsole:
    # Made on first use: importing a command module (so `opal --help`,
    # `--version`, `opal run --no-wait`) loads no rich.
    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr

    def __getattr__(self, name: str) -> Any:
        return getattr(rich_console(stderr=self._stderr), name)


console = cast("Console", _LazyConsole(stderr=False))
err_console = cast("Console", _LazyConsole(stderr=True))


class App:
    """What every command shares (``ctx.obj``): the home and the node opened lazily."""

    def __init__(self, home: str | None, debug: bool = False) -> None:
        self.home = home
        self.debug = debug

    @cached_property
    def node(self) -> Node:
        from opal.node import Node

        return Node.open(self.home)

    def close(self) -> None:
        """Close the node's database connection, if a command opened one (SQLite then
        checkpoints its write-ahead log and removes it, as at any clean close)."""
        node = self.__dict__.get("node")
        if node is not None and "db" in node.__dict__:
            node.db.close()


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
