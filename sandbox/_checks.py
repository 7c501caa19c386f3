"""Start-up checks: each feature is tried for real by a probe process that is created and
confined exactly like a program's, then attempts what the confinement should forbid (what
it tries is `_zygote.probe_report`; the namespaces check runs in the worker itself)."""

from __future__ import annotations

import json
import os
import sysconfig
import time
from typing import TYPE_CHECKING, Any

from sandbox import _job
from sandbox._watch import remove_tree, watch

if TYPE_CHECKING:
    from sandbox._worker import Worker

PROBE_LIMITS = dict(timeout_s=10.0, cpu_limit_s=10, memory_mb=1024, max_processes=32,
                    file_size_mb=16, open_files=64, max_message_mb=1,
                    max_output_bytes=1 << 16, capture_bytes=4096)
CHECKS = ("rlimits", "session", "scratch", "unprivileged", "seccomp", "landlock")
_NAMESPACES = ("net", "pid", "ipc", "uts", "mnt")


def run_probe(w: Worker) -> dict[str, tuple[bool, str]]:
    """Create a process exactly as for a program, confine it, and let it try what the
    confinement should forbid. Returns {check: (ok, detail)}."""
    sp = w.make_spare(probe=True)
    cg_error = w.errors.get("cgroup")
    if w.cgroups is not None and cg_error is None and not w.cgroups.has(sp.pid):
        cg_error = "a program's process is not in the worker's cgroup"
    job = (_job.encode_limits(PROBE_LIMITS) + _job.IN_PROCESS + bytes(_job.NONCE_BYTES)
           + _job.program_payload("", "", [], b"", [], in_process=True))
    w.release_evaluator_ends(sp)
    try:
        os.write(sp.job_w, job)
    except BrokenPipeError:
        pass  # the probe died early; what it said is in its signal pipe
    finally:
        os.close(sp.job_w)
    watched = watch(sp.pid, time.monotonic(), PROBE_LIMITS, sp.out_r, sp.err_r, sp.sig_r)
    for fd in (sp.out_r, sp.err_r, sp.sig_r):
        os.close(fd)
    remove_tree(w.scratch)
    w.last_scratch = False
    try:
        results = {k: tuple(v) for k, v in json.loads(watched["signal"]).items()}
    except (ValueError, AttributeError):
        why = (watched["signal"][1:].decode("utf-8", "replace") if watched["signal"]
               else f"exit status {watched['wstatus']}")
        results = {name: (False, f"the probe process failed: {why}") for name in CHECKS}
    for name, why in {**w.errors, **w.zygote_errors}.items():
        if name in results:
            results[name] = (False, why)
    if w.cgroups is None or cg_error:
        results["cgroup"] = (False, cg_error or w.cfg.get("cgroup_reason") or "not requested")
    else:
        results["cgroup"] = (True, f"cgroup v{w.cgroups.version}: pids and memory limits per "
                                   "worker")
    # a feature that failed its check is not used (where it is still up to us)
    conf = w.conf
    if not conf.inherited:
        if not results["landlock"][0]:
            conf.landlock_fd = conf.scope_fd = None
        if not results["seccomp"][0]:
            conf.seccomp = None
        if not results["unprivileged"][0]:
            conf.uid = conf.gid = None
    if not results["cgroup"][0]:
        w.cgroups = None  # (the worker stays in the leaf: harmless)
    return results


def uid_can_read_python(gid: int, uid: int) -> bool:
    """Can the per-worker uid read the standard library (to import what it needs)?"""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            with open(os.path.join(sysconfig.get_paths()["stdlib"], "os.py"), "rb"):
                code = 0
        finally:
            os._exit(code)
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st) == 0


def check_namespaces(cfg: dict[str, Any]) -> tuple[str, bool, str]:
    if not cfg.get("bwrap"):
        return "namespaces", False, cfg.get("bwrap_reason", "bubblewrap not used")
    host = cfg.get("host_ns", {})
    same = []
    for ns in _NAMESPACES:
        try:
            if os.readlink(f"/proc/self/ns/{ns}") == host.get(ns):
                same.append(ns)
        except OSError as e:
            return "namespaces", False, f"cannot read namespace {ns}: {e}"
    if same:
        return "namespaces", False, f"still in the host's {', '.join(same)} namespace"
    if not os.statvfs("/").f_flag & os.ST_RDONLY:
        return "namespaces", False, "root filesystem is writable"
    return ("namespaces", True,
            "bubblewrap: own net/pid/ipc/uts/mount namespaces, read-only root, private /tmp")
