"""Starting, stopping and asking the CLI server (``opal._launch``, ``opal.cli._server``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opal._launch import connect, encode_request, private_folder, read_line, send_request, socket_path
from opal.errors import BadInputError, InternalError

__all__ = ["start_server", "stop_server", "ping"]

_SUN_PATH_MAX = 108  # sockaddr_un.sun_path on Linux, its terminating NUL included


def start_server(*, idle: float) -> tuple[int, str, bool]:
    """Start the server in its own session unless one answers: (pid, socket, already running).

    Raises:
        BadInputError: a non-positive ``idle``, or a socket folder others can enter.
        InternalError: the server did not come up (its log is named).
    """
    if idle <= 0:
        raise BadInputError(f"--idle must be positive, found {idle:g}")
    path = Path(socket_path())
    info = ping()
    if info is not None and not info.get("stale"):
        return int(info["pid"]), str(path), True
    if info is not None:  # its code changed since it started: replace it
        stop_server()
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not private_folder(str(folder)):
        raise BadInputError(f"{folder} is not a private folder of this user's (owner and mode 0700); "
                            "remove it or set XDG_RUNTIME_DIR to one")
    if len(os.fsencode(path)) >= _SUN_PATH_MAX:
        raise BadInputError(f"the socket path {path} is longer than a Unix socket allows ({_SUN_PATH_MAX - 1} "
                            "bytes); set XDG_RUNTIME_DIR to a shorter folder")
    log = path.with_suffix(".log")
    env = {k: v for k, v in os.environ.items() if k != "OPAL_PASSPHRASE"}  # each command brings its own
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "opal.cli._server", "--socket", str(path), "--idle", repr(idle)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True,
            cwd="/", env=env,
        )
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        info = ping()
        if info is not None:
            return int(info["pid"]), str(path), False
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise InternalError(f"opal cli-server did not start; see {log}")


def stop_server() -> bool:
    """Ask the server to leave; whether one was running."""
    reply = _ask("stop")
    if reply is None:
        return False
    path = socket_path()
    deadline = time.monotonic() + 10.0
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def ping() -> dict[str, Any] | None:
    """The running server's pid, uptime and commands served; None when none answers."""
    reply = _ask("ping")
    if reply is None:
        return None
    try:
        info: dict[str, Any] = json.loads(reply)
    except ValueError:
        return None
    info["socket"] = socket_path()
    return info


def _ask(op: str) -> bytes | None:
    sock = connect()
    if sock is None:
        return None
    try:
        sock.settimeout(10.0)
        send_request(sock, encode_request(op))
        return read_line(sock, bytearray()).strip() or None
    except OSError:
        return None
    finally:
        sock.close()
