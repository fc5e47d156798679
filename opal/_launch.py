"""The ``opal`` command's entry point: hand the command to this user's CLI server
when one runs, else run it here.

A Python process pays for its imports at every start (click, cryptography,
Celery, kombu and redis-py: about 0.2 s of a 0.25 s ``opal run --no-wait``).
``opal cli-server start`` keeps one process with those imports loaded; for the
verbs in ``ROUTED`` this launcher, which imports nothing beyond the standard
library's smallest modules, connects to it and passes its argv, working
directory, environment, umask and its own stdin, stdout and stderr (the
descriptors themselves, over the Unix socket). The server forks a child that
runs the command exactly as this process would have, on those descriptors,
and reports its exit status, which this process exits with. Ctrl-C and
SIGTERM are passed on to the child. This is the model of Mercurial's ``chg``.

Anything unexpected (no server, a server of another checkout, stale code,
a closed descriptor) falls back to running the command here: the server only
ever makes a command faster, never different.

Only the user who started the server can reach it: the socket lives in a
folder of that user's, mode 0700, that the launcher checks before connecting,
and the server checks each peer's uid (``SO_PEERCRED``).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # no `typing` at run time
    import _socket

__all__ = ["main", "socket_path", "private_folder", "encode_request", "ROUTED", "PROTOCOL"]

# Verbs that go to the server: the short ones a script calls in a loop. Verbs
# that run the sandbox, hold a worker or a broker, or write large files run here.
ROUTED = frozenset({"run", "runs", "budget", "ledger", "keys", "trust", "witness", "report"})

# Environment switch: OPAL_CLI_SERVER=off runs every command in its own process.
SWITCH = "OPAL_CLI_SERVER"

PROTOCOL = b"opal-cli/1"
_MAX_REQUEST = 1 << 24


def main() -> None:
    argv = sys.argv[1:]
    if _routed(argv):
        code = _via_server(argv)
        if code is not None:
            sys.exit(code)
    from opal.cli import main as run_here

    run_here()


def socket_path() -> str:
    """This user's server socket for this installation of opal: one per package folder
    and interpreter, so two checkouts, or two virtualenvs of one checkout, never share
    a server."""
    import zlib

    key = os.fsencode(package_folder()) + b"\0" + os.fsencode(sys.executable)
    tag = f"{zlib.crc32(key):08x}"
    return os.path.join(socket_folder(), f"cli-{tag}.sock")


def package_folder() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def socket_folder() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(base, f"opal-{os.getuid()}")


def private_folder(folder: str) -> bool:
    """Whether ``folder`` is a directory of this user's that no one else can enter or
    write (not a symlink), as ssh and tmux demand of theirs."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0


def encode_request(op: str, argv: list[str] = [], env: dict[str, str] | None = None,  # noqa: B006 - read only
                   cwd: str = "/", umask: int = 0o022, package: str | None = None) -> bytes:
    """A request: protocol, op, package folder, cwd, umask, argc, argv, then the
    environment's KEY=VALUE entries, NUL-separated, after its length (4 bytes)."""
    fields = [PROTOCOL, op.encode(), os.fsencode(package or package_folder()), os.fsencode(cwd), b"%o" % umask,
              b"%d" % len(argv), *map(os.fsencode, argv),
              *(os.fsencode(k) + b"=" + os.fsencode(v) for k, v in (env or {}).items())]
    body = b"\0".join(fields)
    return len(body).to_bytes(4, "big") + body


def _routed(argv: list[str]) -> bool:
    if os.environ.get(SWITCH, "").lower() in ("off", "0", "no", "false"):
        return False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--home":
            i += 2
            continue
        if arg.startswith("--home=") or arg == "--debug":
            i += 1
            continue
        return arg in ROUTED
    return False


def connect() -> _socket.socket | None:
    """A connection to this user's server, or None."""
    import _socket

    path = socket_path()
    if not private_folder(os.path.dirname(path)):
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def send_request(sock: _socket.socket, request: bytes, fds: tuple[int, ...] = ()) -> None:
    """Send ``request`` with ``fds`` (SCM_RIGHTS on its first bytes)."""
    import _socket

    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))]
    sent = sock.sendmsg([request[:4]], ancillary if fds else [])
    if sent != 4:
        raise OSError("short write to the opal cli-server")
    sock.sendall(request[4:])


def read_line(sock: _socket.socket, buffer: bytearray) -> bytes:
    """The next line from ``sock`` (b"" at the end of the stream); ``buffer`` keeps the rest."""
    while b"\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            line = bytes(buffer)
            buffer.clear()
            return line
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def _via_server(argv: list[str]) -> int | None:
    """The command's exit status, run by the server; None when it must run here."""
    sock = connect()
    if sock is None:
        return None
    buffer = bytearray()
    try:
        umask = os.umask(0o077)
        os.umask(umask)
        send_request(sock, encode_request("run", argv, dict(os.environ), os.getcwd(), umask), (0, 1, 2))
        first = read_line(sock, buffer).split()
        if len(first) != 2 or first[0] != b"pid":
            sock.close()
            return None  # stale or refused before anything ran: run it here
        child = int(first[1])
    except (OSError, ValueError):
        sock.close()
        return None
    return _await_exit(sock, buffer, child)


def _await_exit(sock: _socket.socket, buffer: bytearray, child: int) -> int:
    import _signal

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except OSError:
            pass

    for signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(signum, forward)
    try:
        last = read_line(sock, buffer).split()
    except OSError:
        last = []
    finally:
        sock.close()
    if len(last) == 2 and last[0] == b"exit":
        return int(last[1])
    sys.stderr.write("opal: the command ended without an exit status (its process was killed)\n")
    return 1
