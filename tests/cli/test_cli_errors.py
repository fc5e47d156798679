"""User mistakes on the newer verbs: one line, exit 2, said before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _opal(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
    env.update(OPAL_HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    return subprocess.run([sys.executable, "-m", "opal", *args], env=env, text=True, capture_output=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("report", "--out", "{tmp}/no/such/folder/r.html"), "--out {tmp}/no/such/folder/r.html: no folder"),
        (("runs", "result", "abc", "--out", "{tmp}/nofolder/r.json"), "--out {tmp}/nofolder/r.json: no folder"),
        (("witness", "cosign", "--key", "w", "--node", "{tmp}", "--file", "{tmp}/x.jsonl"), "not both"),
        (("dataset", "partition", "{tmp}/missing.csv", "{tmp}/parts", "--parts", "2"), "no input file at"),
    ],
)
def test_mistakes_get_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    proc = _opal(tmp_path, *(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert says.format(tmp=tmp_path) in proc.stderr
