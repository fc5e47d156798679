"""Process isolation holds on its own, below the compile policy and guards."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

import pyarrow as pa
import pytest
from sandbox_fixtures import HOST_SECRET, Listener, known_cdr

from opal.errors import BadInputError, InternalError, LimitExceeded
from opal.sandbox import LAYERS, Limits, Runtime, _isolation, active_layers, run_algorithm

TRIVIAL = "def contributions(data, params):\n    return data.cdr[['msisdn']].head(2)\n"
IS_ROOT = os.geteuid() == 0


def _hardened_child(checks: dict[str, object]) -> dict[str, str]:
    """Fork, apply only the process layers (no RestrictedPython), run raw checks."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        results: dict[str, str] = {}
        try:
            layers = {"seccomp": True, "unprivileged_user": IS_ROOT, "clean_environment": True}
            limits = Limits().to_dict()
            _isolation.harden(limits=limits, result_fd=write_fd, layers=layers)
            for name, check in checks.items():
                try:
                    check()  # type: ignore[operator]
                    results[name] = "allowed"
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
    return json.loads(data)


def test_all_layers_active_on_this_host(runtime: Runtime) -> None:
    layers = runtime.layers()
    assert set(layers) == set(LAYERS)
    if IS_ROOT:
        assert all(layers.values()), layers
    assert active_layers() == layers


def test_required_layer_missing_refuses_to_run(runtime: Runtime) -> None:
    saved = dict(runtime._layers)
    runtime._layers["seccomp"] = False
    try:
        with pytest.raises(InternalError, match="'seccomp' is required"):
            runtime.run(source=TRIVIAL, entrypoint="contributions", params={},
                        limits=Limits(require_layers=("seccomp",)))
    finally:
        runtime._layers.update(saved)


def test_unknown_layer_is_bad_input() -> None:
    with pytest.raises(BadInputError, match="unknown isolation layer"):
        Limits(require_layers=("magic",))


def test_seccomp_and_uid_block_raw_syscalls(sandbox_dir: Path, listener: Listener) -> None:
    canary = sandbox_dir / "canary" / "raw.out"
    private = sandbox_dir / "private.txt"
    private.write_text(HOST_SECRET)
    private.chmod(0o600)

    def connect() -> None:
        s = socket.socket()
        s.settimeout(1)
        s.connect(("127.0.0.1", listener.port))

    results = _hardened_child({
        "socket_connect": connect,
        "write_file": lambda: open(canary, "w").write("x"),
        "read_private": lambda: open(private).read(),
        "fork": lambda: os._exit(0) if os.fork() == 0 else None,
        "exec": lambda: os.execv("/bin/true", ["true"]),
        "kill_parent": lambda: os.kill(os.getppid(), 0),
    })
    assert "setup" not in results, results
    assert results["socket_connect"] == "EPERM"
    assert results["write_file"] == "EPERM"
    assert results["fork"] == "EPERM"
    assert results["exec"] == "EPERM"
    assert results["kill_parent"] == "EPERM"
    if IS_ROOT:
        assert results["read_private"] == "EACCES"
    assert not canary.exists()
    assert listener.connections == 0


def test_zygote_has_clean_env_fds_and_own_network(cdr_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPAL_BROKER_URL", "redis://user:broker-secret@10.0.0.1/0")
    keep = open(cdr_path, "rb")  # an open descriptor in the parent must not leak
    try:
        with Runtime(tables={"cdr": cdr_path}) as rt:
            pid = rt._proc.pid
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"broker-secret" not in environ and b"OPAL_BROKER_URL" not in environ
            fds = os.listdir(f"/proc/{pid}/fd")
            # stdin, stdout, stderr (log), control socket, its own PID namespace
            assert len(fds) <= 5, fds
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
            assert [link for link in links if link.startswith("pid:")] == [
                os.readlink(f"/proc/{pid}/ns/pid")
            ]
            assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
            assert os.listdir(os.readlink(f"/proc/{pid}/cwd")) == []
    finally:
        keep.close()


def test_wall_timeout_leaves_no_process_behind(runtime: Runtime) -> None:
    busy = "def contributions(data, params):\n    while True:\n        pass\n"
    with pytest.raises(LimitExceeded, match="wall_seconds"):
        runtime.run(source=busy, entrypoint="contributions", params={},
                    limits=Limits(cpu_seconds=30, wall_seconds=0.5))
    pid = runtime._proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children == []
    assert len(runtime.run(source=TRIVIAL, entrypoint="contributions", params={})) == 2


def test_runtime_restarts_a_dead_zygote(cdr_path: Path) -> None:
    with Runtime(tables={"cdr": cdr_path}) as rt:
        os.kill(rt._proc.pid, 9)
        rt._proc.wait()
        assert len(rt.run(source=TRIVIAL, entrypoint="contributions", params={})) == 2


def test_arrow_ipc_table_is_memory_mapped_read_only(tmp_path: Path) -> None:
    path = tmp_path / "cdr.arrow"
    table = pa.Table.from_pandas(known_cdr(), preserve_index=False)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    src = "def contributions(data, params):\n    return data.cdr[data.cdr.day == 2][['msisdn']]\n"
    out = run_algorithm(source=src, entrypoint="contributions", tables={"cdr": path}, params={})
    assert out["msisdn"].tolist() == [1003]


def test_bad_table_path_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        Runtime(tables={"cdr": tmp_path / "missing.parquet"})
    with pytest.raises(BadInputError, match="identifier"):
        Runtime(tables={"not valid": tmp_path})


def test_params_must_be_json(runtime: Runtime) -> None:
    with pytest.raises(BadInputError, match="JSON"):
        runtime.run(source=TRIVIAL, entrypoint="contributions", params={"x": object()})


def test_trivial_run_is_fast(runtime: Runtime) -> None:
    runtime.run(source=TRIVIAL, entrypoint="contributions", params={})
    started = time.perf_counter()
    for _ in range(5):
        runtime.run(source=TRIVIAL, entrypoint="contributions", params={})
    per_run = (time.perf_counter() - started) / 5
    assert per_run < 1.0  # generous: a loaded 2-core box; the report carries real numbers


@pytest.mark.parametrize(
    "kind,message,withheld",
    [
        ("AlgorithmFailed", "algorithm.py:3: contributions() raised KeyError (a key or column was not found)", False),
        ("AlgorithmFailed", "algorithm.py:3: contributions() raised KeyError zz-secret-region", True),
        ("AlgorithmFailed", "algorithm.py:3: contributions() raised ZzSecretRegion", True),
        ("PolicyViolation", "algorithm.py:2: attribute 'zz-secret-region' of DataFrame is not allowed", True),
        ("PolicyViolation", "algorithm.py:2: attribute 'eval' of DataFrame is not allowed", False),
        ("PolicyViolation", "algorithm.py:2: attribute 'eval' of StringMethods is not allowed", False),
        ("PolicyViolation", "algorithm.py:2: attribute 'eval' of DatetimeIndexResampler is not allowed", False),
        ("AlgorithmFailed", "algorithm.py:987654321012: contributions() raised KeyError", True),
        ("AlgorithmFailed", "algorithm.py:2: value 987654321012", True),
        ("LimitExceeded", "result exceeds the max_output_rows limit of 20000000 rows", False),
        ("TrustError", "algorithm.py:2: forged trust failure", True),
        ("AlgorithmFailed", "algorithm.py:2: two\nlines", True),
    ],
)
def test_runtime_rechecks_child_error_messages(kind: str, message: str, withheld: bool) -> None:
    from opal.sandbox.runtime import _scrubbed_error

    source = "def contributions(data, params):\n    return data.cdr.eval('x')\n    # KeyError\n"
    payload = json.dumps({"type": kind, "message": message}).encode()
    error = _scrubbed_error(payload, source=source, filename="algorithm.py", limits=Limits())
    if withheld:
        assert str(error) != message
        assert "zz-secret" not in str(error) and "987654321012" not in str(error)
    else:
        assert str(error) == message


def test_forked_copy_starts_its_own_zygote_and_leaves_the_parents(cdr_path: Path) -> None:
    with Runtime(tables={"cdr": cdr_path}) as rt:
        parent_zygote = rt._proc.pid
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            ok = b"0"
            try:
                ok = b"1" if len(rt.run(source=TRIVIAL, entrypoint="contributions", params={})) == 2 else b"0"
                ok += b"1" if rt._proc.pid != parent_zygote else b"0"
                rt.close()
            finally:
                os.write(write_fd, ok)
                os._exit(0)
        os.close(write_fd)
        answer = os.read(read_fd, 2)
        os.close(read_fd)
        os.waitpid(pid, 0)
        assert answer == b"11"
        assert rt._proc.pid == parent_zygote and rt._proc.poll() is None
        assert len(rt.run(source=TRIVIAL, entrypoint="contributions", params={})) == 2


def test_running_child_is_confined(runtime: Runtime) -> None:
    """Inspect a live job child from outside: uid, seccomp, rlimits, fds, session."""
    import threading

    busy = "def contributions(data, params):\n    while True:\n        pass\n"
    errors: list[Exception] = []

    def job() -> None:
        try:
            runtime.run(source=busy, entrypoint="contributions", params={},
                        limits=Limits(cpu_seconds=10, wall_seconds=2.0, max_open_files=32))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    zygote = runtime._proc.pid
    child = None
    for _ in range(100):
        kids = Path(f"/proc/{zygote}/task/{zygote}/children").read_text().split()
        if kids:
            child = int(kids[0])
            status = Path(f"/proc/{child}/status").read_text()
            if "Seccomp:\t2" in status:
                break
        time.sleep(0.02)
    assert child is not None
    status = dict(line.split(":", 1) for line in Path(f"/proc/{child}/status").read_text().splitlines())
    limits = Path(f"/proc/{child}/limits").read_text()
    fds = os.listdir(f"/proc/{child}/fd")
    sid = os.getsid(child)
    thread.join()
    assert status["Seccomp"].strip() == "2"
    assert status["NoNewPrivs"].strip() == "1"
    if IS_ROOT:
        assert status["Uid"].split()[:3] == ["65534"] * 3
        assert status["CapEff"].strip() == "0000000000000000"
    table = {line[:26].strip(): line[26:].split()[:2] for line in limits.splitlines()[1:]}
    assert table["Max file size"] == ["0", "0"]
    assert table["Max open files"] == ["32", "32"]
    assert table["Max cpu time"] == ["10", "11"]
    assert table["Max core file size"] == ["0", "0"]
    assert table["Max address space"][0] != "unlimited"
    assert len(fds) == 4  # /dev/null x3 + the result pipe
    assert sid == child
    assert isinstance(errors[0], LimitExceeded) and "wall_seconds" in str(errors[0])


def test_unit_count_is_the_number_of_distinct_units_of_the_resident_table(runtime: Runtime) -> None:
    assert runtime.unit_count("msisdn") == known_cdr()["msisdn"].nunique() == 5
    with pytest.raises(BadInputError, match="has no column 'nope'"):
        runtime.unit_count("nope")


def test_a_zygote_that_cannot_load_its_data_reports_no_text_of_it(tmp_path: Path) -> None:
    """Errors raised while loading the dataset can quote its contents; the
    Runtime's error (which becomes a run's outcome in the ledger) names only
    the error class."""
    from opal.errors import InternalError

    bad = tmp_path / "cdr.parquet"
    bad.write_bytes(b"zz-secret-contents, not a parquet file")
    with pytest.raises(InternalError) as caught, Runtime(tables={"cdr": bad}) as rt:
        rt.run(source="def contributions(data, params):\n    return data.cdr\n", entrypoint="contributions", params={})
    assert caught.value.message == (
        "sandbox zygote failed to start: ArrowInvalid while loading the dataset or preparing the sandbox"
    )


def test_a_run_interrupted_from_outside_leaves_nothing_for_the_next_one(cdr_path: Path) -> None:
    """Celery's soft time limit raises inside the waiting parent while the child still runs. The
    interrupted child's late "done" must not become the next run's outcome: the next run gets its
    own result (before, it read the stale status: a 1.5 s-old child's wall-limit report)."""
    import signal

    class SoftLimit(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise SoftLimit

    slow = ("def contributions(data, params):\n    x = 0\n    while x < 10**12:\n        x += 1\n"
            "    return data.cdr[['msisdn']]\n")
    with Runtime(tables={"cdr": cdr_path}) as rt:
        old = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            with pytest.raises(SoftLimit):
                rt.run(source=slow, entrypoint="contributions", params={},
                       limits=Limits(cpu_seconds=30, wall_seconds=1.5))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        time.sleep(2.0)  # the interrupted child hits its own wall limit meanwhile
        out = rt.run(source=TRIVIAL, entrypoint="contributions", params={})
        assert out["msisdn"].tolist() == known_cdr()["msisdn"].head(2).tolist()
