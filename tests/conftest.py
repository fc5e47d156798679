"""Shared fixtures: a real Redis (OPAL_TEST_REDIS_URL or an embedded one),
fresh OPAL homes, the real `opal` CLI in a subprocess, real worker processes."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from opal._internal.procs import stop_group

REPO = Path(__file__).resolve().parent.parent
ALGORITHMS = REPO / "algorithms"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def auditor_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The auditor's and witnesses' own configuration directory (their state files), per test."""
    path = tmp_path_factory.mktemp("auditor-config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(path))
    return path


@pytest.fixture(autouse=True, scope="session")
def private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A runtime folder of the suite's own, so no `opal` command of a test reaches a CLI
    server the developer started (tests/cli/test_cli_server.py starts its own)."""
    path = tmp_path_factory.mktemp("runtime")
    path.chmod(0o700)
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = saved


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("OPAL_TEST_REDIS_URL")
    if url:
        yield url
        return
    from opal.home import Home
    from opal.worker.broker import EmbeddedRedis

    home = Home(tmp_path_factory.mktemp("broker")).ensure()
    broker = EmbeddedRedis(home)
    yield broker.start()
    broker.stop()


@dataclass
class Opal:
    """The real `opal` command against one home."""

    home: Path
    broker_url: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
        env.update(OPAL_HOME=str(self.home), OPAL_BROKER_URL=self.broker_url, **self.extra_env)
        env.setdefault("XDG_CONFIG_HOME", str(self.home.parent / "auditor-config"))
        return env

    def board(self, *, approvals: int = 2, board_key: str = "board1") -> None:
        """The board's step: a board key and trust policy v1 naming every key made so far in its role."""
        self("keys", "new", board_key, "--role", "board", check=True)
        self("trust", "init", "--board", board_key, "--approvals", str(approvals), check=True)

    def __call__(self, *args: str, check: bool | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "opal", *args], env=self.env, text=True, capture_output=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"opal {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> object:
        proc = self(*args, "--json", check=True)
        return json.loads(proc.stdout)

    def start_worker(self, dataset: str, *, key: str | None = None, concurrency: int = 1) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "opal", "worker", "start", "--dataset", dataset, "--concurrency", str(concurrency), "--loglevel", "WARNING"]
        if key:
            args += ["--key", key]
        log = open(self.home / f"worker-{len(self.workers)}.log", "wb")
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            stop_group(proc)
        self.workers.clear()


@pytest.fixture
def opal(tmp_path: Path, broker_url: str) -> Iterator[Opal]:
    o = Opal(home=tmp_path / "home", broker_url=broker_url)
    yield o
    o.stop_workers()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def _pg_available() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=2).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means: skip the PostgreSQL tests
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database with a random name, dropped at the end."""
    if not _pg_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import psycopg

    name = "opal_test_" + secrets.token_hex(6)
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
