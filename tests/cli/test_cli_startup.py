"""`opal --help` and `--version` load no verb: each verb's module is imported when invoked."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

from click.testing import CliRunner

import opal.cli
from opal.cli import COMMANDS, cli

_PROBE = """
import sys
from opal.cli import cli
try:
    cli([{args}], prog_name="opal")
except SystemExit:
    pass
heavy = ("rich", "pandas", "numpy", "celery", "opal.node", "opal.ledger", "jsonschema", "cryptography")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy or m.startswith("opal.cli.")))
"""


def _loaded_by(*args: str) -> str:
    code = _PROBE.format(args=", ".join(repr(a) for a in args))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.strip().splitlines()[-1]


def test_version_and_help_import_no_verb_and_no_heavy_library() -> None:
    assert _loaded_by("--version") == "['opal.cli._app', 'opal.cli._errors']"
    assert _loaded_by("--help") == "['opal.cli._app', 'opal.cli._errors']"


def test_a_verb_loads_its_own_module_only() -> None:
    loaded = _loaded_by("budget", "--help")
    assert "'opal.cli.budget'" in loaded and "'opal.cli.algo'" not in loaded and "'opal.cli.ledger'" not in loaded


def test_the_lazy_table_lists_every_command_of_every_cli_module() -> None:
    defined: dict[str, str] = {}
    for info in pkgutil.iter_modules(opal.cli.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"opal.cli.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            defined[command.name] = module.__name__
    assert defined == {name: module for name, (module, _) in COMMANDS.items()}


def test_help_lists_every_verb_with_its_short_help() -> None:
    text = CliRunner().invoke(cli, ["--help"]).output
    for name, (_, short) in COMMANDS.items():
        assert f"  {name} " in text and short.split()[0] in text
