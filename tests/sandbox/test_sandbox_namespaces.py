"""A run sees no other run, no other process and no host file (issue #15).

The live-child tests inspect a running job of the real runtime from outside
through /proc; the raw tests fork exactly as the zygote does (``RunForker``
then ``harden`` with every layer) and try, below RestrictedPython, what a
subverted interpreter would try.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sandbox_fixtures import HOST_SECRET

from opal.errors import LimitExceeded, OpalError
from opal.sandbox import Limits, Runtime, _isolation

IS_ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(
    not IS_ROOT or os.uname().machine != "x86_64",
    reason="the namespace layers are probed as root here; raw syscall numbers are x86_64",
)

ALL_LAYERS = {
    "seccomp": True, "unprivileged_user": True, "clean_environment": True,
    "ipc_namespace": True, "pid_namespace": True, "empty_filesystem": True,
}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
IPC_CREAT, IPC_RMID = 0o1000, 0
SHM_KEY = 0x4F50_4131  # "OPA1"


def _as_run(checks: dict[str, Callable[[], object]], workdir: Path) -> dict[str, str]:
    """Fork like the zygote (PID namespace), harden with every layer, run raw checks."""
    forker = _isolation.RunForker()
    read_fd, write_fd = os.pipe()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        pid = forker.fork(pid_namespace=True)
    finally:
        if os.getpid() != 1:
            os.chdir(cwd)
    if pid == 0:
        results: dict[str, str] = {}
        try:
            forker.close_in_child()
            applied = _isolation.harden(limits=Limits().to_dict(), result_fd=write_fd, layers=ALL_LAYERS)
            results["applied"] = ",".join(sorted(k for k, v in applied.items() if v))
            for name, check in checks.items():
                try:
                    value = check()
                    results[name] = "allowed" if value is None else str(value)
                except OSError as exc:
                    results[name] = errno.errorcode.get(exc.errno or 0, "OSError")
        except BaseException as exc:  # noqa: BLE001
            results["setup"] = repr(exc)
        os.write(write_fd, json.dumps(results).encode())
        os._exit(0)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 65536):
        data += chunk
    os.close(read_fd)
    os.waitpid(pid, 0)
    forker.close_in_child()
    return json.loads(data)


def _syscall(number: int, *args: int) -> None:
    if _libc.syscall(number, *[ctypes.c_long(a) for a in args]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _shm_get(create: bool) -> str:
    shmid = _libc.shmget(SHM_KEY, 4096, (IPC_CREAT | 0o666) if create else 0o666)
    if shmid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return "segment"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    empty = tmp_path / "cwd"
    empty.mkdir(mode=0o700)
    return empty


@pytest.fixture
def victim() -> subprocess.Popen[bytes]:
    """A process of the unprivileged uid the run also has."""
    proc = subprocess.Popen(["sleep", "60"], user=65534, group=65534)  # noqa: S607
    yield proc
    proc.kill()
    proc.wait()


def test_a_run_cannot_see_the_ipc_segment_of_an_earlier_run(workdir: Path) -> None:
    first = _as_run({"create": lambda: _shm_get(True)}, workdir)
    second = _as_run({"open": lambda: _shm_get(False)}, workdir)
    assert first.get("create") == "segment", first
    assert second.get("open") == "ENOENT", second
    # nothing leaked into the host's IPC namespace either
    assert _libc.shmget(SHM_KEY, 4096, 0o666) < 0


def test_a_run_sees_no_host_path_and_no_process(workdir: Path, sandbox_dir: Path) -> None:
    secret = sandbox_dir / "host_secret.txt"
    results = _as_run({
        "root_listing": lambda: json.dumps(os.listdir("/")),
        "read_host_secret": lambda: open(secret).read(),
        "read_passwd": lambda: open("/etc/passwd").read(),
        "proc": lambda: json.dumps(os.listdir("/proc")),
        "my_pid": lambda: str(os.getpid()),
        "mkdir_root": lambda: os.mkdir("/x"),
    }, workdir)
    assert "setup" not in results, results
    assert set(results["applied"].split(",")) >= {"ipc_namespace", "pid_namespace", "empty_filesystem"}
    assert results["root_listing"] == "[]"
    assert results["read_host_secret"] == "ENOENT"
    assert results["read_passwd"] == "ENOENT"
    assert results["proc"] == "ENOENT"
    assert results["my_pid"] == "1"
    assert results["mkdir_root"] in ("EPERM", "EROFS")
    assert HOST_SECRET not in json.dumps(results)


@pytest.mark.parametrize(
    "syscall",
    ["kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal"],
)
def test_no_signal_reaches_another_process(workdir: Path, victim: subprocess.Popen[bytes], syscall: str) -> None:
    target = victim.pid
    info = ctypes.create_string_buffer(128)
    numbers = {"kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
               "rt_tgsigqueueinfo": 297, "pidfd_open": 434, "pidfd_send_signal": 424}
    calls: dict[str, Callable[[], object]] = {
        "kill": lambda: _syscall(numbers["kill"], target, signal.SIGKILL),
        "tkill": lambda: _syscall(numbers["tkill"], target, signal.SIGKILL),
        "tgkill": lambda: _syscall(numbers["tgkill"], target, target, signal.SIGKILL),
        "rt_sigqueueinfo": lambda: _syscall(numbers["rt_sigqueueinfo"], target, signal.SIGKILL,
                                            ctypes.addressof(info)),
        "rt_tgsigqueueinfo": lambda: _syscall(numbers["rt_tgsigqueueinfo"], target, target,
                                              signal.SIGKILL, ctypes.addressof(info)),
        "pidfd_open": lambda: _syscall(numbers["pidfd_open"], target, 0),
        "pidfd_send_signal": lambda: _syscall(numbers["pidfd_send_signal"], 0, signal.SIGKILL, 0, 0),
    }
    # the filter the zygote builds once for every run (pid 1 of its namespace)
    _isolation.prepare_seccomp(1)
    results = _as_run({syscall: calls[syscall], "self": lambda: os.kill(os.getpid(), 0)}, workdir)
    assert results[syscall] == "EPERM", results
    assert results["self"] == "allowed"
    time.sleep(0.05)
    assert victim.poll() is None


def _live_child(runtime: Runtime) -> tuple[int, threading.Thread, list[Exception]]:
    busy = "def contributions(data, params):\n    while True:\n        pass\n"
    errors: list[Exception] = []

    def job() -> None:
        try:
            runtime.run(source=busy, entrypoint="contributions", params={},
                        limits=Limits(cpu_seconds=10, wall_seconds=2.0))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    zygote = runtime._proc.pid
    for _ in range(200):
        kids = Path(f"/proc/{zygote}/task/{zygote}/children").read_text().split()
        if kids and "Seccomp:\t2" in Path(f"/proc/{kids[0]}/status").read_text():
            return int(kids[0]), thread, errors
        time.sleep(0.01)
    thread.join()
    raise AssertionError("no live sandbox child found")


def test_live_child_has_its_own_namespaces_an_empty_root_and_a_signal_filter(runtime: Runtime) -> None:
    zygote = runtime._proc.pid
    child, thread, errors = _live_child(runtime)
    try:
        ns = {kind: os.readlink(f"/proc/{child}/ns/{kind}") for kind in ("ipc", "pid", "mnt", "net")}
        zns = {kind: os.readlink(f"/proc/{zygote}/ns/{kind}") for kind in ("ipc", "pid", "mnt", "net")}
        mountinfo = Path(f"/proc/{child}/mountinfo").read_text().splitlines()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{child}/status").read_text().splitlines())
        root_entries = os.listdir(f"/proc/{child}/root")
    finally:
        thread.join()
    assert ns["ipc"] != zns["ipc"] and ns["pid"] != zns["pid"] and ns["mnt"] != zns["mnt"]
    assert ns["net"] == zns["net"] != os.readlink("/proc/self/ns/net")
    assert status["NSpid"].split() == [str(child), "1"]
    # one mount: the empty read-only tmpfs at /
    assert len(mountinfo) == 1, mountinfo
    fields = mountinfo[0].split()
    assert fields[4] == "/" and fields[5].startswith("ro")
    assert mountinfo[0].split(" - ")[1].startswith("tmpfs")
    assert root_entries == []
    assert status["Seccomp"].strip() == "2"
    assert int(status["Seccomp_filters"]) >= 1
    assert isinstance(errors[0], LimitExceeded)


def test_a_second_run_gets_fresh_namespaces(runtime: Runtime) -> None:
    first, thread, _ = _live_child(runtime)
    # held open so the kernel cannot reuse the namespace's inode number
    held = [os.open(f"/proc/{first}/ns/{kind}", os.O_RDONLY) for kind in ("ipc", "pid")]
    first_ns = (os.readlink(f"/proc/{first}/ns/ipc"), os.readlink(f"/proc/{first}/ns/pid"))
    thread.join()
    try:
        second, thread, _ = _live_child(runtime)
        second_ns = (os.readlink(f"/proc/{second}/ns/ipc"), os.readlink(f"/proc/{second}/ns/pid"))
        thread.join()
    finally:
        for fd in held:
            os.close(fd)
    assert first_ns[0] != second_ns[0] and first_ns[1] != second_ns[1]


def _dateutil_probe(path: str) -> str:
    return (
        "import pandas as pd\n"
        "def contributions(data, params):\n"
        f"    pd.Timestamp(0).tz_localize('dateutil/{path}')\n"
        "    return data.cdr[['msisdn']]\n"
    )


def test_dateutil_tz_probe_fails_the_same_for_every_path(runtime: Runtime, sandbox_dir: Path) -> None:
    private = sandbox_dir / "private_probe.txt"
    private.write_text(HOST_SECRET)
    private.chmod(0o600)
    paths = [str(sandbox_dir / "host_secret.txt"), str(private), str(sandbox_dir / "missing"),
             "/etc/passwd", "/etc/shadow", "/usr/share/zoneinfo/UTC"]
    outcomes = set()
    for path in paths:
        try:
            runtime.run(source=_dateutil_probe(path), entrypoint="contributions", params={})
            outcomes.add(("released", ""))
        except OpalError as exc:
            # the message names only type and line, never the path's content
            outcomes.add((type(exc).__name__, str(exc)))
            assert HOST_SECRET not in str(exc)
    assert len(outcomes) == 1, outcomes


def test_time_zones_convert_without_the_disk(runtime: Runtime) -> None:
    source = (
        "def contributions(data, params):\n"
        "    cdr = data.cdr\n"
        "    local = cdr['timestamp'].dt.tz_convert('Africa/Kigali')\n"
        "    return cdr[['msisdn']].assign(hour=local.dt.hour)\n"
    )
    out = runtime.run(source=source, entrypoint="contributions", params={})
    # known_cdr() is in UTC; Kigali is UTC+2 all year
    assert out["hour"].tolist() == [10, 21, 11, 1, 14, 9, 9, 20]


def test_an_unknown_time_zone_is_the_algorithms_error(runtime: Runtime) -> None:
    source = (
        "def contributions(data, params):\n"
        "    return data.cdr[['msisdn']].assign(t=data.cdr['timestamp'].dt.tz_convert('Mars/Olympus'))\n"
    )
    with pytest.raises(OpalError) as info:
        runtime.run(source=source, entrypoint="contributions", params={})
    assert info.value.exit_code == 8
    assert "ZoneInfoNotFoundError" in str(info.value)


def test_zone_names_that_are_paths_fail_the_same_for_every_path(runtime: Runtime, sandbox_dir: Path) -> None:
    outcomes = set()
    for path in ("../../../../etc/passwd", "../../../../etc/nonexistent",
                 "../../../.." + str(sandbox_dir / "host_secret.txt")):
        source = (
            "def contributions(data, params):\n"
            f"    return data.cdr[['msisdn']].assign(t=data.cdr['timestamp'].dt.tz_convert('{path}'))\n"
        )
        try:
            runtime.run(source=source, entrypoint="contributions", params={})
            outcomes.add(("released", ""))
        except OpalError as exc:
            outcomes.add((type(exc).__name__, str(exc)))
            assert HOST_SECRET not in str(exc)
    assert len(outcomes) == 1, outcomes
