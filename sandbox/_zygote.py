"""The zygote: the process that creates every program's process.

It is an interpreter of its own, started by the worker, rather than a fork of it, and it
imports only what a program's process needs (`_harness` and what that pulls in; no json,
socket, `site` or the worker's own modules) plus the modules programs import most. A
process created by clone() gets a copy of the zygote's page tables, takes a copy-on-write
fault for every page it writes, and tears all of them down when it ends: each megabyte the
zygote does not hold is work that no run pays for.

The zygote confines itself once (privilege drop, Landlock, seccomp, and the nested Landlock
domain that keeps programs from signalling or tracing the evaluator), then serves the
worker: each request is one byte (b"J" a program's process, b"P" the start-up probe) with
the new process's pipes attached; it answers with the pid. Creating with clone(CLONE_PARENT)
makes each process the worker's child, so the worker waits for it and sweeps after it.
"""

from __future__ import annotations

import _socket
import fcntl
import gc
import marshal
import os
import resource
import struct
import sys

from sandbox import _harness, _linux

TYPE_CHECKING = False  # typing is not imported at run time: every process is leaner
if TYPE_CHECKING:
    from typing import Any

SOCKET_FD, LANDLOCK_FD, SCOPE_FD = 3, 4, 5  # where the worker puts them
# What programs import most (MBPP's reference solutions, HumanEval's prompts), loaded once
# here so that a program's `import re` costs it nothing (importing re alone takes a fresh
# process milliseconds); together they add under a megabyte to the zygote.
PRELOAD = ("re", "math", "collections", "heapq", "itertools", "functools", "typing", "string",
           "operator", "bisect", "copy", "cmath", "array")


def config(conf: _harness.Confinement, **extra: Any) -> bytes:
    """What the zygote needs from the worker (marshal: the zygote has no json)."""
    return marshal.dumps({"uid": conf.uid, "gid": conf.gid, "nproc_base": conf.nproc_base,
                          "keep_read_search": conf.keep_read_search,
                          "pdeathsig": conf.pdeathsig, "seccomp": conf.seccomp is not None,
                          "landlock": conf.landlock_fd is not None,
                          "scope": conf.scope_fd is not None, **extra})


def main() -> None:
    _linux.set_name(b"sandbox-zygote")
    try:
        _linux.prctl(_linux.PR_SET_PDEATHSIG, 9)  # never outlive the worker
    except OSError:
        pass
    # Its own fds far up, so that the six a request carries arrive in place, at the lowest
    # free numbers 3-8 in the order sent (`_harness.PLACED`): a new process then has little
    # to rearrange.
    sock = _socket.socket(fileno=fcntl.fcntl(SOCKET_FD, fcntl.F_DUPFD_CLOEXEC, 100))
    os.close(SOCKET_FD)
    cfg = marshal.loads(sock.recv(1 << 16))
    # Started without `site` (-S), which alone would hold a megabyte more: programs still
    # import what the worker can, from the same paths (.pth files are not run).
    sys.path[:] = cfg["sys_path"]
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    # The compiler builds its syntax-tree types on first use (about a millisecond): once
    # here, rather than in every program's process.
    compile("def f(x):\n    return [x for _ in ()]\n", "<warm-up>", "exec")
    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    null_fd, _ = fcntl.fcntl(null_fd, fcntl.F_DUPFD_CLOEXEC, 100), os.close(null_fd)
    high = {}
    for name, fd in (("landlock", LANDLOCK_FD), ("scope", SCOPE_FD)):
        if cfg[name]:  # out of the way of the fds each new process rearranges (0-5)
            high[name] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
            os.close(fd)
    conf = _harness.Confinement(uid=cfg["uid"], gid=cfg["gid"], nproc_base=cfg["nproc_base"],
                                landlock_fd=high.get("landlock"), seccomp=None)
    conf.keep_read_search, conf.pdeathsig = cfg["keep_read_search"], cfg["pdeathsig"]
    conf.scope_fd = high.get("scope")
    errors: dict[str, str] = {}
    conf.apply_early(errors)
    for res, val in _harness.FIXED_LIMITS:  # inherited by every program's process
        resource.setrlimit(res, (val, val))
    conf.fixed_set = True
    if os.geteuid() == 0 and cfg["seccomp"]:
        # the drop failed: root programs must not get the filter that lets them set limits
        sock.send(marshal.dumps({"_abort": "still root after the privilege drop"}))
        return
    if cfg["seccomp"]:
        # the zygote's pid joins the protected ones; each child still calls setsid() and
        # sets its job's limits (see build_seccomp_filter)
        try:
            conf.seccomp = _linux.SeccompProgram(_linux.build_seccomp_filter(
                cfg["protected"] + [os.getpid()], zygote=True))
            conf.install_seccomp(errors)
        except OSError as e:
            errors["seccomp"] = str(e)
            conf.seccomp = None
    if conf.scope_fd is not None:
        try:
            _linux.landlock_restrict_self(conf.scope_fd)
            conf.scoped = True
        except OSError as e:
            errors["landlock"] = f"cannot enter the scope domain: {e}"
    conf.inherited = True
    sock.send(marshal.dumps(errors))
    gc.collect()
    gc.freeze()
    anc = _socket.CMSG_SPACE(8 * 4)
    while True:
        try:
            kind, ancdata, _, _ = sock.recvmsg(16, anc, _socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return
        fds: list[int] = []
        for level, typ, data in ancdata:
            if level == _socket.SOL_SOCKET and typ == _socket.SCM_RIGHTS:
                fds += struct.unpack(f"{len(data) // 4}i", data[:len(data) - len(data) % 4])
        if len(kind) != 1 or len(fds) != 6:
            return
        try:
            pid = _linux.clone_parent()
        except OSError:
            pid = -1
        if pid == 0:
            try:
                sock.close()
                sig_w, req_r, rep_w, job_r, out_w, err_w = fds
                probe = None
                if kind == b"P":
                    def probe(res: dict[str, str]) -> bytes:
                        return probe_report(res, cfg["features"], conf, cfg["outside"],
                                            cfg["landlock_abi"], cfg["probe_memory_mb"])
                _harness.child_main(job_fd=job_r, fds=(null_fd, out_w, err_w, sig_w, req_r,
                                                       rep_w),
                                    scratch=cfg["scratch"], conf=conf, probe=probe)
            finally:
                os._exit(_harness.SETUP_FAILED_EXIT)
        for fd in fds:
            os.close(fd)
        sock.send(struct.pack("=i", pid))


def probe_report(res: dict[str, str], feats: list[str], conf: _harness.Confinement,
                 outside: str, landlock_abi: int, memory_mb: int) -> bytes:
    """Runs in the probe process after its confinement: tries what each feature should
    forbid. Returns JSON {check: [ok, why]}."""
    import json  # once per worker, in the probe only

    out: dict[str, tuple[bool, str]] = {}
    if "rlimits" in res:
        out["rlimits"] = (False, res["rlimits"])
    else:
        got = resource.getrlimit(resource.RLIMIT_AS)
        out["rlimits"] = (got == (memory_mb << 20, memory_mb << 20),
                          "AS, DATA, CPU, FSIZE, NOFILE, NPROC, CORE, MEMLOCK set")
    out["session"] = (os.getsid(0) == os.getpid(), "own session and process group")
    try:
        with open("probe.txt", "w") as f:
            f.write("x")
        out["scratch"] = (True, "fresh directory per run, removed afterwards")
    except OSError as e:
        out["scratch"] = (False, f"cannot write in scratch: {e}")
    if "unprivileged" not in feats:
        out["unprivileged"] = (False, "not requested (isolation level capped)")
    elif "unprivileged" in res:
        out["unprivileged"] = (False, res["unprivileged"])
    elif os.geteuid() == 0:
        out["unprivileged"] = (False, "running as root and could not drop to another uid")
    elif conf.uid is not None:
        keep = ("; keeps CAP_DAC_READ_SEARCH: the Python installation is not readable by "
                "other users" if conf.keep_read_search else "")
        out["unprivileged"] = (True, f"root caller: programs run as uid {os.getuid()}, "
                                     f"one uid per worker, so RLIMIT_NPROC binds{keep}")
    else:
        out["unprivileged"] = (True, f"caller is not root (uid {os.getuid()})")
    if "seccomp" not in feats:
        out["seccomp"] = (False, "not requested (isolation level capped)")
    elif "seccomp" in res or conf.seccomp is None:
        out["seccomp"] = (False, res.get("seccomp", "no filter was built"))
    else:
        try:
            _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM).close()
            out["seccomp"] = (False, "filter installed but socket(AF_INET) still works")
        except PermissionError:
            out["seccomp"] = (True, f"{conf.seccomp.n_instructions}-instruction filter; "
                                    "socket() -> EPERM")
    if "landlock" not in feats:
        out["landlock"] = (False, "not requested (isolation level capped)")
    elif "landlock" in res or conf.landlock_fd is None:
        out["landlock"] = (False, res.get("landlock", "no ruleset was built"))
    else:
        try:
            with open(os.path.join(outside, f"probe-{os.getpid()}"), "w"):
                pass
            out["landlock"] = (False, "ruleset applied but a write outside scratch worked")
        except PermissionError:
            feats_s = ", ".join(_linux.landlock_features(landlock_abi))
            out["landlock"] = (True, f"ABI {landlock_abi}: {feats_s}")
    return json.dumps(out).encode()


if __name__ == "__main__":
    sys.exit(main())
