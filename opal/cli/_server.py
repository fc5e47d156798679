"""The CLI server behind ``opal cli-server start`` (see ``opal._launch``).

One process, started by a user, holding the imports of the routed verbs. For
each connection from the launcher it checks the peer is the same user, then
forks a child that takes over the launcher's stdin, stdout and stderr, its
working directory, environment, umask and argv, runs the command as
``opal.cli.main`` would and writes its exit status back. The server itself
never opens a home, a database, a key or a broker connection: everything a
command touches is opened by its own child, from the caller's environment.

The server leaves (and removes its socket) when asked (``opal cli-server
stop``), on SIGTERM, after ``idle`` seconds without a request, and as soon as
a source file of a module it loaded changes, so a new version of opal or of a
library is never served by an old process: the launcher then runs the command
itself.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opal._launch import _MAX_REQUEST, PROTOCOL, package_folder, private_folder
from opal.sandbox._protocol import recv_exact

__all__ = ["serve", "PRELOAD"]

# What the routed verbs import, loaded once here so no child pays for it.
PRELOAD = (
    "opal.cli",
    "opal.cli._render",
    "opal.cli.run",
    "opal.cli.budget",
    "opal.cli.ledger",
    "opal.cli.keys",
    "opal.cli.trust",
    "opal.cli.witness",
    "opal.cli.report",
    "opal.node",
    "opal.runs",
    "opal.runs.request",
    "opal.runs.results",
    "opal.runs.dispatch",
    "opal.trust.keyring",
    "opal.ledger",
    "opal.ledger.log",
    "opal.release.budget",
    "opal.worker.celery",
    "opal.worker.liveness",
    "opal.worker._transport",
    "opal.report.history",
    "opal.report.views",
    "celery.app.amqp",
    "celery.app.routes",
    "celery.loaders.app",
    "celery.events.dispatcher",
    "celery.app.events",
    "celery.utils.deprecated",
    "kombu.transport.redis",
    "redis",
    "cryptography.hazmat.primitives.serialization",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "rich.console",
    "rich.table",
    "rich._emoji_codes",
    "encodings.idna",  # the first getaddrinfo of a host name loads it
)

_SO_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def serve(path: Path, *, idle: float) -> None:
    """Serve the launcher on the Unix socket ``path`` until told to stop."""
    started = time.time()
    preload()
    watched = _watched_files()
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not private_folder(str(folder)):
        raise SystemExit(f"opal cli-server: {folder} must be a folder of this user's, mode 0700")
    # One server per socket: the lock is held for the server's life (the kernel drops it
    # when the process ends), so a second start never takes over a live server's path.
    lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _log("another server holds this socket: leaving")
        os.close(lock)
        return
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)  # a socket left by a server that was killed
    listener.bind(str(path))
    os.chmod(path, 0o600)
    bound = os.stat(path).st_ino
    listener.listen(128)
    listener.settimeout(idle)
    served = 0
    stop = False

    def on_term(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True
        listener.close()

    signal.signal(signal.SIGTERM, on_term)
    # Children report their own status; the kernel reaps them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Objects made by the imports stay put: a child's garbage collection does not
    # write to (and so copy) every page it shares with the server.
    gc.collect()
    gc.freeze()
    _log(f"serving on {path} (pid {os.getpid()}, {len(watched)} source files watched, "
         f"ready in {time.time() - started:.2f} s)")
    last = time.monotonic()
    try:
        while not stop:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if time.monotonic() - last < idle:
                    _log("accept timed out early; serving on")
                    continue
                _log(f"idle for {idle:g} s: leaving")
                break
            except OSError:
                break  # closed by SIGTERM
            last = time.monotonic()
            with conn:
                op = _serve_one(conn, (listener, lock), watched, started, served)
            if op == "run":
                served += 1
            elif op in ("stop", "stale"):
                _log("asked to stop" if op == "stop" else "a source file changed: leaving")
                break
    finally:
        try:
            if os.stat(path).st_ino == bound:
                path.unlink()
        except OSError:
            pass
        listener.close()
        os.close(lock)


@dataclass(frozen=True)
class Request:
    op: str
    package: str
    cwd: str
    umask: int
    argv: list[str]
    env: dict[str, str]


def decode_request(body: bytes) -> Request:
    """The fields of ``encode_request``'s body.

    Raises:
        ValueError: not a request of this protocol.
    """
    fields = body.split(b"\0")
    if len(fields) < 6 or fields[0] != PROTOCOL:
        raise ValueError("not an opal-cli/1 request")
    argc = int(fields[5])
    if argc < 0 or len(fields) < 6 + argc:
        raise ValueError("bad argument count")
    env = {}
    for entry in fields[6 + argc:]:
        key, sep, value = entry.partition(b"=")
        if not sep or not key:
            raise ValueError("bad environment entry")
        env[os.fsdecode(key)] = os.fsdecode(value)
    return Request(op=fields[1].decode(), package=os.fsdecode(fields[2]), cwd=os.fsdecode(fields[3]),
                   umask=int(fields[4], 8), argv=[os.fsdecode(a) for a in fields[6:6 + argc]], env=env)


def preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    _warm_openssl()


def _warm_openssl() -> None:
    """Have OpenSSL set up its PEM decoders once, here: the first key a process loads
    pays ~2 ms for it. With a throwaway key, never written anywhere."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    loaded = serialization.load_pem_private_key(pem, password=None)
    public = loaded.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    serialization.load_pem_public_key(public)


def _serve_one(conn: socket.socket, held: tuple[socket.socket, int], watched: dict[str, tuple[int, int]],
               started: float, served: int) -> str:
    conn.settimeout(5.0)
    try:
        _, uid, _ = _SO_PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _SO_PEERCRED.size))
        if uid != os.getuid():
            _log(f"refused a connection from uid {uid}")
            return "refused"
        header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    except OSError:
        return "broken"
    try:
        if len(header) != 4:
            return "broken"
        size = int.from_bytes(header, "big")
        if size > _MAX_REQUEST:
            return "broken"
        request = decode_request(recv_exact(conn, size))
        op = request.op
        if op == "ping":
            conn.sendall(json.dumps({"pid": os.getpid(), "uptime": time.time() - started, "served": served,
                                     "package": package_folder(), "stale": _stale(watched)}).encode() + b"\n")
            return "ping"
        if op == "stop":
            conn.sendall(b"stopping\n")
            return "stop"
        if op != "run" or len(fds) != 3:
            return "broken"
        if request.package != package_folder() or _stale(watched):
            conn.sendall(b"stale\n")
            return "stale"
        pid = os.fork()
        if pid == 0:
            try:
                _child(conn, held, request, fds)
            finally:
                os._exit(1)  # _child never returns; this is the last guard of the server's loop
        return "run"
    except (OSError, ValueError, EOFError):
        return "broken"
    finally:
        for fd in fds:
            os.close(fd)


def _child(conn: socket.socket, held: tuple[socket.socket, int], request: Request, fds: list[int]) -> None:
    code = 1
    try:
        try:
            listener, lock = held
            listener.close()
            os.close(lock)  # a long command must not keep the next server from starting
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            _reopen_stdio()
            os.chdir(request.cwd)
            os.environ.clear()
            os.environ.update(request.env)
            os.umask(request.umask)
            sys.argv = ["opal", *request.argv]
            conn.settimeout(None)
            conn.sendall(f"pid {os.getpid()}\n".encode())
            running = _stop_with_caller(conn)
            code = _run_command(request.argv)
            running.clear()
        except KeyboardInterrupt:
            code = 130  # outside the command's own handling (while click parsed, say)
        finally:
            # Done: a late Ctrl-C (or the caller leaving) must not interrupt the report.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except BaseException:  # noqa: BLE001 - whatever happens, this process ends here
        pass
    finally:
        try:
            # Before the pid line, this is not "pid N": the launcher runs the command itself.
            conn.sendall(f"exit {code}\n".encode())
        finally:
            os._exit(code)


def _run_command(argv: list[str]) -> int:
    """Run the command as ``opal.cli.main`` does; its exit status."""
    from opal.cli import cli

    try:
        cli.main(args=argv, prog_name="opal")
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        import logging

        logging.shutdown()
    if code is None:
        return _flush(0)
    if isinstance(code, int):
        return _flush(code)
    print(code, file=sys.stderr)
    return _flush(1)


def _flush(code: int) -> int:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def _reopen_stdio() -> None:
    # As Python opens them at start: stdout line-buffered on a terminal, stderr
    # always line-buffered with backslashreplace.
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding=sys.stdin.encoding)
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding=sys.stdout.encoding,
                                  line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding=sys.stderr.encoding,
                                  errors="backslashreplace", line_buffering=True)


def _stop_with_caller(conn: socket.socket) -> threading.Event:
    """Interrupt the command (as Ctrl-C would) if the launcher goes away while it
    runs: it sends nothing after its request, so the end of the stream means it is
    gone. Clear the returned event once the command is done."""
    running = threading.Event()
    running.set()

    def watch() -> None:
        try:
            while conn.recv(64):
                pass
        except OSError:
            pass
        if running.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="opal-cli-caller", daemon=True).start()
    return running


def _watched_files() -> dict[str, tuple[int, int]]:
    """Every loaded module's source (opal's and its libraries'): mtime and size."""
    files: dict[str, tuple[int, int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        files[path] = (st.st_mtime_ns, st.st_size)
    return files


def _stale(watched: dict[str, tuple[int, int]]) -> bool:
    for path, seen in watched.items():
        try:
            st = os.stat(path)
        except OSError:
            return True
        if (st.st_mtime_ns, st.st_size) != seen:
            return True
    return False


def _log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} opal cli-server: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m opal.cli._server")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--idle", type=float, default=3600.0)
    args = parser.parse_args()
    serve(args.socket, idle=args.idle)
