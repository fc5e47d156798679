"""Shared CLI plumbing: the node in ``ctx.obj``, JSON output, rich console."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import click
from rich.console import Console

from opal.node import Node

__all__ = ["App", "pass_app", "emit_json", "console", "err_console"]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class App:
    home: str | None
    debug: bool = False
    _node: Node | None = field(default=None, repr=False)

    @cached_property
    def node(self) -> Node:
        return Node.open(self.home)


pass_app = click.make_pass_decorator(App)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))
