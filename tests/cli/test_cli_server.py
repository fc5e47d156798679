"""`opal cli-server`: the routed verbs run in a child of a warm process, and what a
caller sees (output, exit status, files, ledger) is what the command prints in a
process of its own. The attacks: another user on the socket, a folder others can
write, a caller who leaves or presses Ctrl-C, an upgrade under a running server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ALGORITHMS, REPO, Opal, wait_for

PARAMS = '{"start_day": 0, "end_day": 2}'


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime folder and a CLI server in it; the server is stopped after."""
    folder = tmp_path / "runtime"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    saved = os.umask(0o022)  # the server's own umask differs from the callers' in the tests below
    try:
        started = _cli("cli-server", "start", "--idle", "300")
    finally:
        os.umask(saved)
    assert started.returncode == 0, started.stderr
    yield folder
    _cli("cli-server", "stop")


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opal", *args], env=env or dict(os.environ), cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _server() -> dict[str, object] | None:
    from opal.cli._serverctl import ping

    return ping()


def _served() -> int:
    info = _server()
    assert info is not None, "the CLI server is not running"
    return int(info["served"])  # type: ignore[call-overload]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _node(opal: Opal, world: Path) -> None:
    for name, role in (("olga", "operator"), ("sam", "statistician"), ("rita", "reviewer"), ("ravi", "reviewer")):
        opal("keys", "new", name, "--role", role, check=True)
    opal.board()
    opal("dataset", "register", "cdr", str(world), "--key", "olga", check=True)
    opal("algo", "submit", str(ALGORITHMS / "population_density"), "--key", "sam", check=True)
    opal("algo", "approve", "population_density", "--key", "rita", check=True)
    opal("algo", "approve", "population_density", "--key", "ravi", check=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from opal.data.synth import synthesize

    path = tmp_path_factory.mktemp("world") / "cdr.parquet"
    synthesize(path, subscribers=300, days=3, seed=5)
    return path


def test_commands_through_the_server_print_and_exit_as_in_their_own_process(
    runtime: Path, opal: Opal, world: Path
) -> None:
    _node(opal, world)
    served = _served()
    off = {**opal.env, "OPAL_CLI_SERVER": "off"}
    for args in (["budget", "show"], ["ledger", "show", "--limit", "3"], ["ledger", "show", "--json", "--limit", "2"],
                 ["runs", "show", "0" * 32], ["run", "no_such_algo", "--dataset", "cdr", "--key", "sam"],
                 ["budget", "show", "--json"], ["keys", "list"]):
        here = subprocess.run([sys.executable, "-m", "opal", *args], env=off, capture_output=True, text=True)
        there = opal(*args)
        assert (there.returncode, there.stdout, there.stderr) == (here.returncode, here.stdout, here.stderr), args
    assert _served() == served + 7  # each went through the server (with OPAL_CLI_SERVER=off, none did)
    # an error is still one line and its exit status
    missing = opal("runs", "show", "0" * 32)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr

    # A run requested through the server is recorded, signed, queued and released by a worker.
    queued = opal("run", "population_density", "--dataset", "cdr", "--params", PARAMS, "--epsilon", "0.5",
                  "--key", "sam", "--no-wait")
    assert queued.returncode == 0, queued.stderr
    run_id = queued.stdout.strip()
    opal.start_worker("cdr", key="olga")
    waited = opal("run", "population_density", "--dataset", "cdr", "--params", PARAMS, "--epsilon", "0.25",
                  "--key", "sam", "--json")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["state"] == "released"
    wait_for(lambda: opal.json("runs", "show", run_id)["state"] == "released")  # type: ignore[index]
    budget = opal.json("budget", "show")
    assert [(b["dataset"], b["spent"]) for b in budget] == [("cdr", 0.75)]  # type: ignore[index,union-attr]
    assert opal("ledger", "verify").returncode == 0
    assert _served() >= served + 13  # the two runs, the show, budget and verify went through it too


def test_the_callers_folder_umask_and_environment_are_the_commands(runtime: Path, tmp_path: Path) -> None:
    served = _served()
    caller = tmp_path / "caller"
    caller.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
    # a relative --home resolves against the caller's folder, keys are written under its umask
    proc = subprocess.run(["sh", "-c", "umask 077 && exec \"$0\" -m opal --home rel keys new kim --role statistician",
                           sys.executable], env=env, cwd=caller, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # (the key itself is 0600 whatever the umask; the home's other files follow it)
    written = [caller / "rel" / "config.json", caller / "rel" / "opal.db", caller / "rel" / "keys" / "kim.pem"]
    assert [oct(p.stat().st_mode & 0o777) for p in written] == ["0o600"] * 3
    # OPAL_HOME of each caller: two homes, one server
    for name in ("a", "b"):
        home = tmp_path / name
        result = _cli("keys", "new", f"key_{name}", "--role", "reviewer", env={**env, "OPAL_HOME": str(home)})
        assert result.returncode == 0, result.stderr
    listed_a = _cli("keys", "list", env={**env, "OPAL_HOME": str(tmp_path / "a")}).stdout
    assert "key_a" in listed_a and "key_b" not in listed_a
    assert _served() == served + 4


def test_a_server_whose_code_changed_steps_aside_and_the_command_still_runs(runtime: Path, opal: Opal) -> None:
    opal("keys", "new", "olga", "--role", "operator", check=True)
    expected = opal("keys", "list", check=True).stdout
    source = REPO / "opal" / "cli" / "keys.py"
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as an upgrade would
    try:
        assert opal("keys", "list", check=True).stdout == expected  # run by the launcher itself
        assert _server() is None
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    log = next(runtime.rglob("cli-*.log")).read_text()
    assert "a source file changed: leaving" in log
    # start replaces it; and a stale one still running would be replaced too
    assert _cli("cli-server", "start").returncode == 0 and _server() is not None


def _waiting_run(opal: Opal) -> subprocess.Popen[str]:
    """A request that waits: no worker serves the dataset."""
    return subprocess.Popen(
        [sys.executable, "-m", "opal", "run", "population_density", "--dataset", "cdr", "--params", PARAMS,
         "--epsilon", "0.5", "--key", "sam"],
        env=opal.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_ctrl_c_reaches_the_command_and_a_caller_that_dies_takes_its_command_along(
    runtime: Path, opal: Opal, world: Path
) -> None:
    _node(opal, world)
    server = int(_server()["pid"])  # type: ignore[index,call-overload]
    client = _waiting_run(opal)
    wait_for(lambda: len(_children(server)) == 1, timeout=30)
    wait_for(lambda: any(r["state"] == "requested" for r in opal.json("runs", "list")), timeout=30)  # type: ignore[index,union-attr]
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=30)
    assert client.returncode == 130 and "opal: interrupted" in err
    wait_for(lambda: _children(server) == [], timeout=30)

    client = _waiting_run(opal)
    wait_for(lambda: len(_children(server)) == 1, timeout=30)
    time.sleep(0.5)
    client.kill()
    client.wait(timeout=30)
    wait_for(lambda: _children(server) == [], timeout=30)  # not left waiting 600 s for no one


def test_a_folder_others_can_enter_is_not_used(runtime: Path, opal: Opal) -> None:
    served = _served()
    runtime_folder = runtime / f"opal-{os.getuid()}"
    runtime_folder.chmod(0o755)
    try:
        assert opal("keys", "list").returncode == 0  # run by the launcher, not sent to the socket
        refused = _cli("cli-server", "start")
        assert refused.returncode == 2 and "not a private folder" in refused.stderr
    finally:
        runtime_folder.chmod(0o700)
    assert _served() == served


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to act as a second user) and a system python3 that user can run")
def test_another_user_on_the_socket_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tempfile

    # A runtime folder another user can reach (pytest's own folders are root's alone)
    base = Path(tempfile.mkdtemp(prefix="opal-runtime-", dir="/tmp"))
    base.chmod(0o711)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    assert _cli("cli-server", "start", "--idle", "300").returncode == 0
    try:
        _refuses_another_user(base)
    finally:
        _cli("cli-server", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _refuses_another_user(runtime: Path) -> None:
    served = _served()
    folder = runtime / f"opal-{os.getuid()}"
    sock = next(folder.glob("cli-*.sock"))
    folder.chmod(0o711)  # as if the folder's protection failed: the server's own check must hold
    sock.chmod(0o777)
    probe = (
        "import os, sys\n"
        "from opal._launch import encode_request, send_request, read_line\n"
        "import _socket\n"
        "s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
        f"s.connect({str(sock)!r})\n"
        "request = encode_request('run', ['keys', 'new', 'evil', '--role', 'board'], {}, '/tmp', 0o22,\n"
        f"                         package={str(REPO / 'opal')!r})\n"
        "send_request(s, request, (0, 1, 2))\n"
        "try:\n"
        "    print('reply', repr(read_line(s, bytearray())))\n"
        "except ConnectionResetError:\n"
        "    print('reset')\n"
    )
    try:
        proc = subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, text=True, timeout=60,
                              cwd="/", env={"PYTHONPATH": str(REPO)}, user=65534, group=65534)
    finally:
        folder.chmod(0o700)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("reset", "reply b''")  # closed without a pid: nothing ran
    assert _served() == served
    assert "refused a connection from uid 65534" in next(folder.glob("cli-*.log")).read_text()


def test_a_second_server_never_takes_over_a_live_ones_socket(runtime: Path) -> None:
    from opal._launch import socket_path

    first = _server()
    assert first is not None
    second = subprocess.run([sys.executable, "-m", "opal.cli._server", "--socket", socket_path(), "--idle", "30"],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "another server holds this socket: leaving" in second.stderr
    after = _server()
    assert after is not None and after["pid"] == first["pid"]  # still the first, still on its socket
    assert Path(socket_path()).exists()


def test_a_socket_path_too_long_for_unix_is_named_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    proc = _cli("cli-server", "start")
    assert proc.returncode == 2
    assert proc.stderr.startswith("opal: error: the socket path ") and "set XDG_RUNTIME_DIR" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert _cli("keys", "list", env={**os.environ, "OPAL_HOME": str(tmp_path / "h")}).returncode == 0
