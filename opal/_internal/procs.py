"""Stopping the process groups OPAL starts (workers, with their pool and zygote)."""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["stop_group"]


def stop_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], *, timeout: float = 20.0) -> None:
    """SIGTERM the process group of ``proc`` (a Celery warm shutdown), SIGKILL it
    if it has not exited after ``timeout`` seconds; wait for it either way."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
        return
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
