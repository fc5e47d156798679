"""opal demo"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from opal.cli._app import console


@click.command("demo")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path(".opal-demo"),
              show_default=True, help="Fresh state folder for the demo (replaced if made by an earlier demo).")
@click.option("--subscribers", type=int, default=20_000, show_default=True)
@click.option("--days", type=int, default=14, show_default=True)
def demo(folder: Path, subscribers: int, days: int) -> None:
    """Run the whole story: synth data, keys, submit, approve, worker, run, audit."""
    from opal.demo import run_demo

    def say(text: str, markup: bool = True, **_: Any) -> None:
        console.print(text, markup=markup)

    run_demo(folder.absolute(), say=say, subscribers=subscribers, days=days)


COMMANDS = [demo]
