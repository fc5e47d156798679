"""The benchmarks live outside the package (issue #18): the wheel's package
discovery leaves ``benchmarks`` out, nothing in ``opal`` imports it, and its
entry points still start from the repository root."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

from tests.conftest import REPO


def _find_config() -> dict[str, list[str]]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    found: dict[str, list[str]] = pyproject["tool"]["setuptools"]["packages"]["find"]
    return found


def test_package_discovery_ships_opal_and_leaves_benchmarks_out() -> None:
    find = _find_config()
    # What setuptools itself finds with this configuration ([tool.setuptools.packages.find]
    # searches namespace packages by default), from the repository root.
    packages = find_namespace_packages(
        where=str(REPO), include=find.get("include", ["*"]), exclude=find.get("exclude", [])
    )
    assert "opal" in packages and "opal.worker" in packages and "opal.ledger" in packages
    assert (REPO / "benchmarks" / "__init__.py").is_file()
    shipped_benchmarks = [p for p in packages if p == "benchmarks" or p.startswith("benchmarks.")]
    assert shipped_benchmarks == []
    assert not (REPO / "opal" / "bench").exists()


def _benchmark_references(path: Path, root: Path = REPO) -> list[str]:
    """Each import of ``benchmarks`` in ``path``, and each string naming it or one
    of its modules (``python -m benchmarks.x``, ``importlib.import_module``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        found += [f"{path.relative_to(root)}:{node.lineno}: {name}" for name in names
                  if name == "benchmarks" or name.startswith("benchmarks.")]
    return found


def test_opal_never_imports_benchmarks() -> None:
    sources = sorted((REPO / "opal").rglob("*.py"))
    assert len(sources) > 50
    found = [ref for path in sources for ref in _benchmark_references(path)]
    assert found == []


def test_the_reference_check_catches_imports_and_module_paths(tmp_path: Path) -> None:
    # The check above can fail: every form it looks for is caught, and look-alikes are not.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import benchmarks.scenario\n"
        "from benchmarks import harness\n"
        "import benchmarks as b\n"
        "ARGV = ['python', '-m', 'benchmarks.ledger_audit']\n"
        "from opal import errors\n"
        "from . import benchmarks\n"
        "NOTE = 'benchmarks are run by make bench'\n"
    )
    refs = _benchmark_references(probe, tmp_path)
    assert sorted(refs) == [
        "probe.py:1: benchmarks.scenario", "probe.py:2: benchmarks", "probe.py:3: benchmarks",
        "probe.py:4: benchmarks.ledger_audit",
    ]


@pytest.mark.parametrize(
    ("module", "usage"),
    [
        ("benchmarks", "usage: python -m benchmarks "),
        ("benchmarks.ledger_audit", "usage: python -m benchmarks.ledger_audit "),
        ("benchmarks.worker_throughput", "usage: python -m benchmarks.worker_throughput "),
        ("benchmarks.release_gate", "usage: release_gate.py "),
    ],
)
def test_each_benchmark_starts_from_the_repository_root(module: str, usage: str) -> None:
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(usage), proc.stdout[:300]


def test_a_child_started_elsewhere_finds_benchmarks_through_child_env(tmp_path: Path) -> None:
    # benchmarks/ is not installed: the harness's children (python -m benchmarks._synth_child, ...)
    # find it through the environment child_env gives them, whatever their working directory.
    from benchmarks.config import child_env

    # As in an installed (not editable) opal: the libraries on the path, the repository not.
    # (The development venv's editable install puts the repository root on every path
    # through a .pth file; -S skips .pth files, PYTHONPATH gives the libraries back.)
    import sysconfig

    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    argv = [sys.executable, "-S", "-c", "import benchmarks.config as c; print(c.REPO)"]
    alone = subprocess.run(argv, cwd=tmp_path, env=base, capture_output=True, text=True, timeout=60, check=False)
    assert alone.returncode == 1 and "No module named 'benchmarks'" in alone.stderr
    child = subprocess.run(argv, cwd=tmp_path, env=child_env(base), capture_output=True, text=True, timeout=60,
                           check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == str(REPO)
    kept = child_env({**base, "PYTHONPATH": "/elsewhere"})
    assert kept["PYTHONPATH"] == f"{REPO}{os.pathsep}/elsewhere"
