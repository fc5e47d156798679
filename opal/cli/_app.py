"""Shared CLI plumbing: the node in ``ctx.obj``, JSON output, rich console."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from opal.node import Node

__all__ = ["App", "pass_app", "emit_json", "console", "err_console"]

console: Console
err_console: Console


def __getattr__(name: str) -> Any:
    # The consoles (and rich) load when a command first asks for them, not
    # for --help or --version.
    if name in ("console", "err_console"):
        from rich.console import Console

        globals()["console"] = Console(highlight=False, soft_wrap=True)
        globals()["err_console"] = Console(stderr=True, highlight=False, soft_wrap=True)
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
