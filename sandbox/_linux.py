"""Linux kernel interfaces through ctypes: prctl, seccomp-bpf and Landlock.

Everything here is built once in a worker (filter bytes, ruleset fd) so that confining a
forked child costs a handful of system calls.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_MACHINE = os.uname().machine
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2


def prctl(option: int, arg2: int = 0) -> None:
    if _libc.prctl(option, arg2, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl({option}): {os.strerror(e)}")


PR_SET_NAME = 15
# a second handle on prctl that takes a C string: naming a process then creates no ctypes
# type (a new array type per call would cost every new process a PyType_Ready)
_prctl_str = _libc["prctl"]
_prctl_str.restype = ctypes.c_int
_prctl_str.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]


def set_name(name: bytes) -> None:
    """The process name shown by ps and top (15 bytes at most); best effort."""
    _prctl_str(PR_SET_NAME, name, 0, 0, 0)


PR_SET_KEEPCAPS = 8
CAP_DAC_READ_SEARCH = 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def set_capabilities(caps: int) -> None:
    """Make `caps` (a bit mask) the effective and permitted set of the calling thread."""
    hdr = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = data[i].permitted = (caps >> (32 * i)) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"capset: {os.strerror(e)}")


_NR_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE_PARENT = 0x00008000
_SIGCHLD = 17


def clone_parent_supported() -> bool:
    """Raw clone() is safe for a single-threaded Python on glibc >= 2.34, whose raise() asks
    the kernel for the thread id instead of trusting the copied thread descriptor."""
    import platform  # the worker only: the zygote and its children never need it

    libc, version = platform.libc_ver()
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return _MACHINE in _NR_CLONE and libc == "glibc" and (major, minor) >= (2, 34)


def clone_parent() -> int:
    """clone(CLONE_PARENT | SIGCHLD): like fork(), but the new process is a child of the
    caller's parent. Returns 0 in the new process, its pid in the caller. The caller must be
    single-threaded and hold no locks (Python's after-fork hooks do not run)."""
    pid = _libc.syscall(_NR_CLONE[_MACHINE], ctypes.c_ulong(_CLONE_PARENT | _SIGCHLD),
                        ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0))
    if pid < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"clone(CLONE_PARENT): {os.strerror(e)}")
    return int(pid)


def get_child_subreaper() -> bool:
    val = ctypes.c_int(0)
    if _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(val), 0, 0, 0) != 0:
        return False
    return bool(val.value)


# --------------------------------------------------------------------------- seccomp-bpf

# Syscall numbers for the two supported architectures (x86_64: asm/unistd_64.h;
# aarch64: asm-generic/unistd.h). AUDIT_ARCH_* identify the calling convention.
_ARCHES = {
    "x86_64": 0xC000003E,
    "aarch64": 0xC00000B7,
}
_SYSCALLS = {
    "x86_64": dict(
        socket=41, ptrace=101, process_vm_readv=310, process_vm_writev=311, mount=165,
        umount2=166, pivot_root=155, chroot=161, unshare=272, setns=308, setsid=112,
        setpgid=109, kill=62, tkill=200, tgkill=234, clone=56, clone3=435, prlimit64=302,
        setrlimit=160, mknod=133, mknodat=259, bpf=321, perf_event_open=298, keyctl=250,
        add_key=248, request_key=249, reboot=169, kexec_load=246, kexec_file_load=320,
        init_module=175, finit_module=313, delete_module=176, swapon=167, swapoff=168,
        acct=163, settimeofday=164, clock_settime=227, clock_adjtime=305, adjtimex=159,
        sethostname=170, setdomainname=171, quotactl=179, open_by_handle_at=304,
        name_to_handle_at=303, userfaultfd=323, io_uring_setup=425, io_uring_enter=426,
        io_uring_register=427, pidfd_send_signal=424, pidfd_getfd=438, kcmp=312,
        process_madvise=440, move_mount=429, open_tree=428, fsopen=430, fsconfig=431,
        fsmount=432, fspick=433, mount_setattr=442, syslog=103, vhangup=153,
        lookup_dcookie=212, fanotify_init=300, iopl=172, ioperm=173,
    ),
    "aarch64": dict(
        socket=198, ptrace=117, process_vm_readv=270, process_vm_writev=271, mount=40,
        umount2=39, pivot_root=41, chroot=51, unshare=97, setns=268, setsid=157,
        setpgid=154, kill=129, tkill=130, tgkill=131, clone=220, clone3=435, prlimit64=261,
        setrlimit=164, mknodat=33, bpf=280, perf_event_open=241, keyctl=219, add_key=217,
        request_key=218, reboot=142, kexec_load=104, kexec_file_load=294, init_module=105,
        finit_module=273, delete_module=106, swapon=224, swapoff=225, acct=89,
        settimeofday=170, clock_settime=112, clock_adjtime=266, adjtimex=171,
        sethostname=161, setdomainname=162, quotactl=60, open_by_handle_at=265,
        name_to_handle_at=264, userfaultfd=282, io_uring_setup=425, io_uring_enter=426,
        io_uring_register=427, pidfd_send_signal=424, pidfd_getfd=438, kcmp=272,
        process_madvise=440, move_mount=429, open_tree=428, fsopen=430, fsconfig=431,
        fsmount=432, fspick=433, mount_setattr=442, syslog=116, vhangup=58,
        lookup_dcookie=18, fanotify_init=262,
    ),
}
# Denied outright with EPERM. socket() is denied for every address family: the programs we
# run need no sockets (socketpair stays allowed), and AF_UNIX would reach host daemons.
_DENY = (
    "socket", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
    "pivot_root", "chroot", "unshare", "setns", "setsid", "setpgid", "setrlimit", "mknod",
    "mknodat", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "reboot",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "quotactl", "open_by_handle_at", "name_to_handle_at",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "pidfd_send_signal", "pidfd_getfd", "kcmp", "process_madvise", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "syslog", "vhangup",
    "lookup_dcookie", "fanotify_init", "iopl", "ioperm",
)
_CLONE_NEW_MASK = 0x7E020000  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}

_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_OFF_NR, _OFF_ARCH = 0, 4


def _arg_lo(i: int) -> int:  # little-endian: low 32 bits of args[i] in struct seccomp_data
    return 16 + 8 * i


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    assert 0 <= jt < 256 and 0 <= jf < 256
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def seccomp_supported_arch() -> str | None:
    m = _MACHINE
    return m if m in _ARCHES else None


def build_seccomp_filter(protected_pids: list[int], zygote: bool = False) -> bytes:
    """A BPF program: deny the syscalls in `_DENY`, namespace flags in clone(), and signals to
    `protected_pids` (the worker, the zygote and their parent as seen from the sandbox) or
    to every process (kill(-1, ...)), and setting resource limits.

    `zygote=True` builds the filter that a zygote installs once for all the processes it
    creates; each of them must still call setsid() and set its own job's limits, so those
    stay allowed (limits only on the process itself: not being root, it cannot raise a hard
    limit; a process that called setsid() is a session leader and cannot call it again, and
    what its children start with setsid() the worker's subreaper sweep still kills)."""
    arch = seccomp_supported_arch()
    if arch is None:
        raise OSError(errno.ENOSYS, f"seccomp filter has no syscall table for {_MACHINE}")
    nr = _SYSCALLS[arch]
    eperm = _RET_ERRNO | errno.EPERM
    prog = [
        _ins(_LD_W_ABS, 0, 0, _OFF_ARCH),
        _ins(_JEQ_K, 1, 0, _ARCHES[arch]),
        _ins(_RET_K, 0, 0, _RET_KILL_PROCESS),  # foreign calling convention (e.g. int 0x80)
        _ins(_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    if arch == "x86_64":  # x32 syscalls carry bit 30
        prog += [_ins(_JGE_K, 0, 1, 0x40000000), _ins(_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    for name in _DENY:
        if name in nr and not (zygote and name in ("setrlimit", "setsid")):
            prog += [_ins(_JEQ_K, 0, 1, nr[name]), _ins(_RET_K, 0, 0, eperm)]
    # clone3 cannot be inspected (flags live in memory): ENOSYS makes libc fall back to clone.
    prog += [_ins(_JEQ_K, 0, 1, nr["clone3"]), _ins(_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    prog += [
        _ins(_JEQ_K, 0, 4, nr["clone"]),
        _ins(_LD_W_ABS, 0, 0, _arg_lo(0)),
        _ins(_JSET_K, 0, 1, _CLONE_NEW_MASK),
        _ins(_RET_K, 0, 0, eperm),
        _ins(_RET_K, 0, 0, _RET_ALLOW),
    ]
    if zygote:
        prog += [  # prlimit64(pid, ...): only on itself (pid 0)
            _ins(_JEQ_K, 0, 6, nr["prlimit64"]),
            _ins(_LD_W_ABS, 0, 0, _arg_lo(0)),
            _ins(_JEQ_K, 0, 3, 0),
            _ins(_LD_W_ABS, 0, 0, _arg_lo(0) + 4),
            _ins(_JEQ_K, 0, 1, 0),
            _ins(_RET_K, 0, 0, _RET_ALLOW),
            _ins(_RET_K, 0, 0, eperm),
        ]
    else:
        prog += [  # prlimit64(pid, res, new_limit, old_limit): reading is fine, setting is not
            _ins(_JEQ_K, 0, 6, nr["prlimit64"]),
            _ins(_LD_W_ABS, 0, 0, _arg_lo(2)),
            _ins(_JEQ_K, 0, 3, 0),
            _ins(_LD_W_ABS, 0, 0, _arg_lo(2) + 4),
            _ins(_JEQ_K, 0, 1, 0),
            _ins(_RET_K, 0, 0, _RET_ALLOW),
            _ins(_RET_K, 0, 0, eperm),
        ]
    kill_targets = sorted({p & 0xFFFFFFFF for p in protected_pids}
                          | {(-p) & 0xFFFFFFFF for p in protected_pids if p > 0}
                          | {0xFFFFFFFF})
    thread_targets = sorted({p for p in protected_pids if p > 0})
    for name, targets in (("kill", kill_targets), ("tkill", thread_targets),
                          ("tgkill", thread_targets)):
        m = len(targets)
        prog.append(_ins(_JEQ_K, 0, m + 3, nr[name]))
        prog.append(_ins(_LD_W_ABS, 0, 0, _arg_lo(0)))
        for i, t in enumerate(targets):
            prog.append(_ins(_JEQ_K, m - i, 0, t))
        prog += [_ins(_RET_K, 0, 0, _RET_ALLOW), _ins(_RET_K, 0, 0, eperm)]
    prog.append(_ins(_RET_K, 0, 0, _RET_ALLOW))
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompProgram:
    """A filter ready to install: the C structures are built once, in the worker."""

    def __init__(self, filter_bytes: bytes) -> None:
        self.n_instructions = len(filter_bytes) // 8
        self._buf = ctypes.create_string_buffer(filter_bytes, len(filter_bytes))
        self._prog = _SockFprog(self.n_instructions, ctypes.cast(self._buf, ctypes.c_void_p))
        self._addr = ctypes.addressof(self._prog)

    def install(self) -> None:
        """Install on the calling (single-threaded) process. Irreversible."""
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self._addr, 0, 0) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"seccomp filter refused: {os.strerror(e)}")


# --------------------------------------------------------------------------- Landlock

_NR_LANDLOCK_CREATE_RULESET = 444  # same number on every architecture
_NR_LANDLOCK_ADD_RULE = 445
_NR_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
_NET_ALL = 1 | 2  # BIND_TCP | CONNECT_TCP
_SCOPE_ALL = 1 | 2  # ABSTRACT_UNIX_SOCKET | SIGNAL


def landlock_abi() -> int:
    """Landlock ABI version of the running kernel; 0 if unavailable (with errno reason)."""
    r = _libc.syscall(_NR_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                      ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    if r < 0:
        return 0
    return int(r)


def _landlock_fs_handled(abi: int) -> int:
    if abi >= 5:
        return (1 << 16) - 1
    if abi >= 3:
        return (1 << 15) - 1
    if abi >= 2:
        return (1 << 14) - 1
    return (1 << 13) - 1


def landlock_features(abi: int) -> list[str]:
    out = ["fs"]
    if abi >= 4:
        out.append("tcp")
    if abi >= 6:
        out.append("scope(signal,abstract-unix)")
    return out


def build_landlock_ruleset(abi: int, read_paths: list[str], write_paths: list[str],
                           rw_files: list[str]) -> int:
    """A ruleset fd: everything under `write_paths` allowed, `read_paths` read+execute,
    `rw_files` (devices like /dev/null) read+write; every other path, TCP bind/connect, and
    signals/abstract sockets leaving the domain are denied (as far as `abi` supports)."""
    handled = _landlock_fs_handled(abi)
    if abi >= 6:
        attr = struct.pack("=QQQ", handled, _NET_ALL, _SCOPE_ALL)
    elif abi >= 4:
        attr = struct.pack("=QQ", handled, _NET_ALL)
    else:
        attr = struct.pack("=Q", handled)
    abuf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc.syscall(_NR_LANDLOCK_CREATE_RULESET, abuf, ctypes.c_size_t(len(attr)),
                       ctypes.c_uint32(0))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"landlock_create_ruleset: {os.strerror(e)}")
    fd = int(fd)
    try:
        rx = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
        for paths, rights in ((read_paths, rx), (write_paths, handled),
                              (rw_files, FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV)):
            for p in paths:
                try:
                    pfd = os.open(p, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a path that does not exist here needs no rule
                try:
                    allowed = rights & handled
                    if not os.path.isdir(p):
                        allowed &= _FILE_RIGHTS
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, pfd), 12)
                    if _libc.syscall(_NR_LANDLOCK_ADD_RULE, fd,
                                     ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), rule,
                                     ctypes.c_uint32(0)) != 0:
                        e = ctypes.get_errno()
                        raise OSError(e, f"landlock_add_rule({p}): {os.strerror(e)}")
                finally:
                    os.close(pfd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def build_landlock_scope(abi: int) -> int | None:
    """A ruleset fd that only scopes signals and abstract UNIX sockets (ABI >= 6; None
    below). A process that enters it becomes a nested domain: it can no longer signal,
    trace or connect to processes of the domain it came from."""
    if abi < 6:
        return None
    attr = struct.pack("=QQQ", 0, 0, _SCOPE_ALL)
    abuf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc.syscall(_NR_LANDLOCK_CREATE_RULESET, abuf, ctypes.c_size_t(len(attr)),
                       ctypes.c_uint32(0))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"landlock_create_ruleset (scope): {os.strerror(e)}")
    return int(fd)


def landlock_restrict_self(ruleset_fd: int) -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if _libc.syscall(_NR_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset_fd),
                     ctypes.c_uint32(0)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"landlock_restrict_self: {os.strerror(e)}")
