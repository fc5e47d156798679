"""The README's walkthrough, run word for word in a shell, from the repository's folder."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Walkthrough", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the walkthrough has no sh block"
    return match.group(1)


@pytest.mark.slow
def test_the_walkthrough_runs_word_for_word(tmp_path: Path) -> None:
    if not (REPO / ".venv" / "bin" / "activate").exists():
        pytest.skip("the walkthrough sources .venv/bin/activate: run it through make test")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPAL_", "VIRTUAL_ENV"))}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    script = "set -euo pipefail\n" + _walkthrough()
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, text=True, capture_output=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert re.search(r"run [0-9a-f]{32}: released \(", proc.stderr)
    assert re.search(r"^cells released: \d+; ε spent 0\.5;", proc.stdout, re.M)
    assert re.search(r"^ledger ok: 9 entries", proc.stdout, re.M)
    assert "embedded Redis stopped" in proc.stdout
    assert not (REPO / "my_algo").exists()                     # nothing was scaffolded inside the repository
    assert (tmp_path / "opal-walkthrough" / "my_algo" / "opal.toml").exists()
    assert (tmp_path / ".config" / "opal" / "audit").is_dir()  # the auditor's memory, outside OPAL_HOME
