"""A full disk is named as such, with no traceback, and nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _opal(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
    env["OPAL_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "opal", *args], env=env, text=True, capture_output=True, timeout=120)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:   # unbuffered: close has nothing left to flush
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_a_full_disk_is_named_and_the_ledger_stays_whole(small_disk: Path) -> None:
    home = small_disk / "home"
    assert _opal(home, "keys", "new", "olga", "--role", "operator").returncode == 0
    filler = _fill(small_disk)
    proc = _opal(home, "keys", "new", "sam", "--role", "statistician")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "disk" in proc.stderr and "full" in proc.stderr and "free some space" in proc.stderr
    assert "OperationalError" not in proc.stderr

    filler.unlink()
    assert _opal(home, "ledger", "verify").returncode == 0
    again = _opal(home, "keys", "new", "sam", "--role", "statistician")
    assert again.returncode == 0, again.stderr
    assert _opal(home, "ledger", "verify").returncode == 0
