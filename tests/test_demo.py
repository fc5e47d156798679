"""``opal demo`` (what ``make demo`` runs) tells the whole story, and again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _demo(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
    return subprocess.run([sys.executable, "-m", "opal", "demo", "--dir", str(folder), "--subscribers", "2000"],
                          env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=300)


def test_the_demo_runs_twice_in_the_same_folder(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    for attempt in (1, 2):       # the second replaces the first, the auditor's state of the old log included
        proc = _demo(folder)
        assert proc.returncode == 0, f"attempt {attempt}: {proc.stdout[-600:]}{proc.stderr[-600:]}"
        assert "ledger ok: 11 entries" in proc.stdout
        assert "demo finished in" in proc.stdout and "nothing left running" in proc.stdout
    assert (tmp_path / "demo-auditor.json").is_file()
