"""`opal --help` and `--version` load no verb: each verb's module is imported when invoked;
and each verb imports only what it uses (`opal run --no-wait` sends through Celery and
nothing else heavy)."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
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


# What one command left in sys.modules, after running for real (through main(), as the
# `opal` script does); its exit status and output, so an early failure cannot pass for
# a lean import.
_MODULES_PROBE = """
import contextlib, io, json, sys
from opal.cli import main
sys.argv = ["opal", *json.loads(sys.argv[1])]
out = io.StringIO()
code = 0
with contextlib.redirect_stdout(out):
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""

# Libraries that no client verb below needs: the worker's and the algorithm's.
_WORKER_SIDE = ("pandas", "numpy", "pyarrow", "opendp", "RestrictedPython", "matplotlib", "psycopg", "opal.sandbox",
                "opal.release.gate", "opal.worker.pipeline")


def _run_probe(env: dict[str, str], *args: str) -> tuple[int, str, set[str]]:
    proc = subprocess.run([sys.executable, "-c", _MODULES_PROBE, json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["code"], result["out"], set(result["modules"])


def _loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


@pytest.fixture(scope="module")
def node_env(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> Iterator[dict[str, str]]:
    """A node with a dataset and a submitted bundle; its broker is the tests' real Redis."""
    from benchmarks.scenario import build

    home = tmp_path_factory.mktemp("startup") / "home"
    build(home, subscribers=40, days=1).node.db.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
    env.update(OPAL_HOME=str(home), OPAL_BROKER_URL=broker_url)
    yield env


def test_run_no_wait_sends_through_celery_and_imports_nothing_it_does_not_use(node_env: dict[str, str]) -> None:
    code, out, modules = _run_probe(
        node_env, "run", "spin_count", "--dataset", "demo", "--params", "{}", "--epsilon", "0.5", "--no-wait"
    )
    assert code == 0 and re.fullmatch(r"[0-9a-f]{32}\n", out)
    # the message went out through Celery's app and kombu's Redis transport
    assert {"celery.app.base", "kombu.transport.redis", "opal.worker._transport"} <= modules
    for name in (*_WORKER_SIDE, "rich", "jsonschema", "opal.ledger.verify", "opal.ledger.audit_state",
                 "opal.bundle.registry", "opal.trust.policy", "opal.trust.governance"):
        assert not _loaded(modules, name), f"opal run --no-wait imported {name}"


@pytest.mark.parametrize("verb", [("runs", "list"), ("budget", "show")])
def test_reading_verbs_load_no_broker_and_rich_only_to_draw_a_table(
    node_env: dict[str, str], verb: tuple[str, str]
) -> None:
    code, out, modules = _run_probe(node_env, *verb)
    assert code == 0 and "demo" in out
    assert _loaded(modules, "rich")
    for name in (*_WORKER_SIDE, "celery", "kombu", "redis", "jsonschema", "opal.ledger.verify",
                 "opal.runs.request", "opal.data.catalog"):
        assert not _loaded(modules, name), f"opal {' '.join(verb)} imported {name}"
    code, out, modules = _run_probe(node_env, *verb, "--json")
    assert code == 0 and json.loads(out) and not _loaded(modules, "rich")


def test_a_command_closes_the_database_before_it_exits(node_env: dict[str, str]) -> None:
    # main() skips the exit-time collection: the database must be closed by the command
    # itself, or SQLite would leave its write-ahead log behind.
    home = Path(node_env["OPAL_HOME"])
    proc = subprocess.run([sys.executable, "-m", "opal", "runs", "list"], env=node_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    assert (home / "opal.db").exists() and not (home / "opal.db-wal").exists()
