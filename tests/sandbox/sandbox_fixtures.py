from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pandas as pd
import pytest

from opal.sandbox import Limits, Runtime

SECRET_MSISDN = 987654321012
SECRET_REGION = "zz-secret-region"
HOST_SECRET = "host-file-secret-7f3a"


def known_cdr() -> pd.DataFrame:
    ts = pd.to_datetime(
        [
            "2024-03-04 08:15",  # Monday
            "2024-03-04 19:40",
            "2024-03-05 09:00",
            "2024-03-05 23:30",
            "2024-03-06 12:00",
            "2024-03-07 07:05",
            "2024-03-07 07:45",
            "2024-03-08 18:00",
        ],
        utc=True,
    )
    return pd.DataFrame(
        {
            "msisdn": pd.Series(
                [1001, 1001, 1002, 1003, 1003, 1004, 1001, SECRET_MSISDN], dtype="int64"
            ),
            "timestamp": ts,
            "day": pd.Series([0, 0, 1, 1, 2, 3, 3, 4], dtype="int64"),
            "cell_id": pd.Series([11, 12, 11, 13, 13, 14, 11, 15], dtype="int64"),
            "region": pd.Series(
                ["north", "south", "north", "east", "east", "north", "north", SECRET_REGION],
                dtype="str",
            ),
            "event": pd.Series(
                ["call", "sms", "data", "call", "call", "sms", "data", "call"], dtype="str"
            ),
            "duration_s": pd.Series([60, 0, 0, 120, 30, 0, 0, 999], dtype="int64"),
        }
    )


@pytest.fixture(scope="session")
def sandbox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sandbox")
    known_cdr().to_parquet(root / "cdr.parquet", index=False)
    # A host file any user could read: only the sandbox may stop the read.
    secret = root / "host_secret.txt"
    secret.write_text(HOST_SECRET)
    secret.chmod(0o644)
    # A directory any user could write to: only the sandbox may stop the write.
    canary_dir = root / "canary"
    canary_dir.mkdir()
    canary_dir.chmod(0o777)
    os.chmod(root, 0o755)
    return root


@pytest.fixture(scope="session")
def cdr_path(sandbox_dir: Path) -> Path:
    return sandbox_dir / "cdr.parquet"


@pytest.fixture(scope="session")
def runtime(cdr_path: Path) -> Runtime:
    rt = Runtime(tables={"cdr": cdr_path}, limits=Limits(cpu_seconds=20, wall_seconds=30))
    yield rt
    rt.close()


class Listener:
    """A TCP listener on 127.0.0.1 that records whether anyone connected."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="session")
def listener() -> Listener:
    lst = Listener()
    yield lst
    lst.close()
