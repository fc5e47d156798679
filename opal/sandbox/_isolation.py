"""Process isolation for sandbox children (issue #3, layer 3).

The zygote calls ``enter_namespaces`` once, while it is still single-threaded:
every child it forks then lives in an empty network namespace (no interface
at all, so no loopback either). Each child calls ``harden`` right after the
fork: new session, no inherited descriptors beyond its result pipe, an
unprivileged uid, rlimits, and a seccomp filter that refuses sockets, new
processes, program execution and file writes.
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

__all__ = ["enter_namespaces", "harden", "seccomp_available"]

CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
NOBODY = 65534

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


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


def _load_seccomp() -> None:
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
    # Signals only to itself.
    pid = os.getpid()
    flt.add_rule(eperm, "kill", sc.Arg(0, sc.NE, pid))
    flt.add_rule(eperm, "tgkill", sc.Arg(0, sc.NE, pid))
    flt.add_rule(eperm, "tkill", sc.Arg(0, sc.NE, pid))
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
    _close_other_fds(result_fd)
    applied["clean_environment"] = layers.get("clean_environment", False)
    baseline = _address_space_in_use()

    if layers.get("unprivileged_user") and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    applied["unprivileged_user"] = os.geteuid() != 0
    # The parent-death signal is cleared by a uid change: set it afterwards.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if os.getppid() == 1:
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
