"""Process isolation for sandbox children (issue #3, layer 3; issue #15).

The zygote calls ``enter_namespaces`` once, while it is still single-threaded:
every child it forks then lives in an empty network namespace (no interface
at all, so no loopback either). It forks each run with ``RunForker``: the
child is process 1 of a PID namespace of its own, so it can name no other
process. The child calls ``harden`` right after the fork: new session, no
inherited descriptors beyond its result pipe, a fresh IPC namespace (no
System V segment or message queue of an earlier run), a mount namespace whose
root is an empty read-only tmpfs (no host path exists, so every path-taking
API fails the same way), an unprivileged uid, rlimits, and a seccomp filter
that refuses sockets, new processes, program execution, file writes and
signals to any process but itself.

Linux offers no Python API for mount(2), pivot_root(2) or setns(2) on 3.11,
so they are called through ctypes (the C library's own wrappers).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
from typing import Any

try:  # imported up front: after the uid drop the library files may be unreadable
    import pyseccomp as _seccomp
except Exception:  # noqa: BLE001 - libseccomp missing: the layer is reported inactive
    _seccomp = None

__all__ = ["RunForker", "enter_empty_root", "enter_namespaces", "harden", "seccomp_available"]

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
CLONE_THREAD = 0x00010000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
NOBODY = 65534

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
# glibc has no pivot_root wrapper; elsewhere the layer is reported inactive
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def _mount(source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data: bytes | None) -> None:
    _check(_libc.mount(source, target, fstype, flags, data))


class RunForker:
    """Forks each run as process 1 of a fresh PID namespace (zygote side).

    ``unshare(CLONE_NEWPID)`` only decides where the *next* child goes; the
    zygote then returns to its own namespace with ``setns`` so that the one
    after gets a fresh namespace too.
    """

    def __init__(self) -> None:
        self._own: int | None = None
        try:
            self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            # Returning must be possible before leaving: without the privilege
            # (an unprivileged user namespace) runs share the zygote's PID
            # namespace and the layer is reported inactive.
            _check(_libc.setns(self._own, CLONE_NEWPID))
        except OSError:
            if self._own is not None:
                os.close(self._own)
            self._own = None

    @property
    def fd(self) -> int:
        """The descriptor of the zygote's own PID namespace (-1 if none)."""
        return -1 if self._own is None else self._own

    def fork(self, *, pid_namespace: bool) -> int:
        """``os.fork()``, the child in a PID namespace of its own when asked.

        Raises OSError if the namespace cannot be made.
        """
        if not pid_namespace or self._own is None:
            return os.fork()
        _unshare(CLONE_NEWPID)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                _check(_libc.setns(self._own, CLONE_NEWPID))
        return pid

    def close_in_child(self) -> None:
        if self._own is not None:
            os.close(self._own)
            self._own = None


def enter_empty_root(root: str) -> None:
    """Make this (freshly forked) process see an empty, read-only root.

    A private mount namespace gets a tmpfs on ``root`` (the zygote's empty
    working directory; the host never sees the mount), ``pivot_root`` moves
    it to ``/`` and the old root is detached: no host path is reachable.
    """
    _unshare(CLONE_NEWNS)
    _mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _mount(b"opal-empty", root.encode(), b"tmpfs", flags, b"size=4k,nr_inodes=1,mode=0555")
    os.chdir(root)
    if _SYS_PIVOT_ROOT is None:
        raise OSError(errno.ENOSYS, "pivot_root: unknown system call number on this machine")
    # pivot_root(".", "."): the old root ends up stacked on the new one
    _check(int(_libc.syscall(_SYS_PIVOT_ROOT, b".", b".")))
    _check(_libc.umount2(b".", MNT_DETACH))
    os.chdir("/")
    _mount(None, b"/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)


def enter_namespaces() -> dict[str, bool]:
    """Move this (single-threaded) process into a fresh network + IPC namespace.

    As root a plain ``unshare(CLONE_NEWNET)`` works; otherwise an unprivileged
    user namespace is created first, mapping the caller's own uid.
    """
    uid, gid = os.geteuid(), os.getegid()
    try:
        if uid == 0:
            _unshare(CLONE_NEWNET | CLONE_NEWIPC)
        else:
            _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC)
            with open("/proc/self/setgroups", "w") as fh:
                fh.write("deny")
            with open("/proc/self/uid_map", "w") as fh:
                fh.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as fh:
                fh.write(f"{gid} {gid} 1")
    except OSError:
        return {"network_namespace": False}
    return {"network_namespace": True}


def seccomp_available() -> bool:
    return _seccomp is not None


# Syscalls refused with EPERM. Threads stay possible (clone with CLONE_THREAD)
# because numpy/pyarrow may start them; everything that makes a new process,
# runs a program, talks to the network, or changes the system is refused.
_DENIED_SYSCALLS = (
    # network
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "sendto", "sendmsg", "sendmmsg", "recvfrom", "recvmsg", "recvmmsg",
    "getsockopt", "setsockopt", "shutdown",
    # new processes and programs
    "fork", "vfork", "execve", "execveat",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open",
    "pidfd_getfd", "pidfd_send_signal", "kcmp", "process_madvise",
    # namespaces, mounts, kernel
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "mount_setattr", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "bpf", "perf_event_open", "userfaultfd",
    "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "syslog", "keyctl", "add_key", "request_key", "personality",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "name_to_handle_at", "open_by_handle_at", "openat2", "lookup_dcookie",
    "sethostname", "setdomainname", "settimeofday", "clock_settime",
    "adjtimex", "clock_adjtime", "iopl", "ioperm", "vhangup",
    # credentials
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setgroups", "setfsuid", "setfsgid", "capset",
    # file system writes
    "creat", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename",
    "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat",
    "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat",
    "truncate", "mknod", "mknodat", "utime", "utimes", "utimensat",
    "futimesat", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
    "lremovexattr", "fremovexattr", "fallocate", "chdir", "fchdir",
)


def _build_filter(pid: int) -> Any:
    sc = _seccomp
    if sc is None:
        raise OSError(errno.ENOSYS, "pyseccomp/libseccomp is not available")
    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)
    for name in _DENIED_SYSCALLS:
        try:
            flt.add_rule(eperm, name)
        except Exception:
            # unknown on this architecture / libseccomp version
            continue
    # clone3 takes its flags in a struct the filter cannot read: ENOSYS makes
    # the C library fall back to clone(), whose flags are checked below.
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    # Opening for writing or creating files is refused; reading stays possible
    # so the interpreter can finish lazy imports of already vetted modules.
    for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND):
        flt.add_rule(eperm, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
        flt.add_rule(eperm, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
    # Signals only to itself (pidfd_open and pidfd_send_signal are denied above).
    for name in ("kill", "tgkill", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        flt.add_rule(eperm, name, sc.Arg(0, sc.NE, pid))
    return flt


# Filters built ahead, by the pid they let signal: building one costs ~6 ms
# (rule by rule through libseccomp), loading a built one ~1 ms. Every run in a
# PID namespace of its own is pid 1, so the zygote builds that one once.
_PREBUILT: dict[int, Any] = {}


def prepare_seccomp(pid: int) -> None:
    """Build, in the zygote, the filter a child with ``pid`` will load."""
    _PREBUILT[pid] = _build_filter(pid)


def _load_seccomp() -> None:
    pid = os.getpid()
    flt = _PREBUILT.get(pid)
    if flt is None:
        flt = _build_filter(pid)
    flt.load()


def _close_other_fds(keep: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2 and devnull != keep:
        os.close(devnull)
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)


def _address_space_in_use() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def harden(*, limits: dict[str, Any], result_fd: int, layers: dict[str, bool]) -> dict[str, bool]:
    """Apply every available isolation layer to this freshly forked child.

    Returns the layers actually applied; raises OSError if one fails.
    """
    applied: dict[str, bool] = {}
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # RLIMIT_FSIZE=0 must make writes fail, not kill the process silently.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    root = os.getcwd()
    _close_other_fds(result_fd)
    applied["clean_environment"] = layers.get("clean_environment", False)
    baseline = _address_space_in_use()
    # needs the zygote's privileges: before the uid drop
    if layers.get("ipc_namespace"):
        _unshare(CLONE_NEWIPC)
    applied["ipc_namespace"] = bool(layers.get("ipc_namespace"))
    if layers.get("empty_filesystem"):
        enter_empty_root(root)
    applied["empty_filesystem"] = bool(layers.get("empty_filesystem"))
    applied["pid_namespace"] = bool(layers.get("pid_namespace")) and os.getpid() == 1

    if layers.get("unprivileged_user") and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    applied["unprivileged_user"] = os.geteuid() != 0
    # The parent-death signal is cleared by a uid change: set it afterwards.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if os.getppid() == 1:  # orphaned before the death signal was armed
        os._exit(70)

    cpu = int(limits["cpu_seconds"])
    # The zygote's warm heap block is already mapped; it counts against the allowance.
    memory = baseline - int(limits.get("reserved_bytes", 0)) + int(limits["memory_bytes"])
    for which, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_FSIZE, (0, 0)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NOFILE, (int(limits["max_open_files"]),) * 2),
        (resource.RLIMIT_NPROC, (int(limits["max_threads"]),) * 2),
        (resource.RLIMIT_MEMLOCK, (0, 0)),
        (resource.RLIMIT_MSGQUEUE, (0, 0)),
    ):
        resource.setrlimit(which, value)
    applied["rlimits"] = True

    if layers.get("seccomp"):
        _load_seccomp()
        applied["seccomp"] = True
    else:
        applied["seccomp"] = False
    applied["network_namespace"] = layers.get("network_namespace", False)
    applied["restricted_python"] = True
    return applied
