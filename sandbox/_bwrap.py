"""The bubblewrap command line around a sandbox worker. Runs in the caller's process only."""

from __future__ import annotations

import os
import shutil
import sys

PKG_DIR = os.path.dirname(os.path.abspath(__file__))
BWRAP_ROOT = "/tmp/gbmpo-sandbox"  # the worker's root inside bubblewrap (on its own tmpfs)
# Capabilities the (trusted) worker keeps inside bubblewrap when the caller is root: to drop
# each program to its own uid, chown its scratch directory, signal it and clean up after it.
_WORKER_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE",
                "CAP_FOWNER")
_PRIVATE_DIRS = ("/tmp", "/dev", "/proc")  # what bubblewrap mounts afresh over the host's


def interpreter_paths() -> list[str]:
    """Everything the worker's interpreter needs that bubblewrap's fresh /tmp (or /dev,
    /proc) would hide: the interpreter and its prefixes (a virtual environment created
    under /tmp, as in a scratch checkout or a CI clone), its import paths, and this package.
    Each is bound read-only at the same place inside; nested paths are dropped."""
    import site
    import sysconfig

    exe = sys.executable
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(exe), os.path.dirname(os.path.realpath(exe)), PKG_DIR,
             *site.getsitepackages(), *sysconfig.get_paths().values(),
             *(p for p in sys.path if p and os.path.isabs(p))}
    found |= {os.path.realpath(p) for p in found}
    hidden = sorted(os.path.normpath(p) for p in found
                    if any(os.path.normpath(p).startswith(d + "/") for d in _PRIVATE_DIRS)
                    and os.path.exists(p))
    out: list[str] = []
    for p in hidden:
        if not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def bwrap_argv(scratch_mb: int, rw_dirs: list[str]) -> list[str]:
    """bubblewrap around a worker. As root, no user namespace is needed, and the worker
    keeps the few capabilities it needs to drop each program to its own uid."""
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if os.geteuid() != 0:
        argv += ["--unshare-user"]
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--size", str(scratch_mb << 20), "--tmpfs", "/tmp"]
    for d in interpreter_paths():
        argv += ["--ro-bind", d, d]
    for d in rw_dirs:
        argv += ["--bind", d, d]
    if os.geteuid() == 0:
        # CAP_SYS_RESOURCE only to exempt the worker from its cgroup's OOM killer
        for cap in _WORKER_CAPS + (("CAP_SYS_RESOURCE",) if rw_dirs else ()):
            argv += ["--cap-add", cap]
    return argv + ["--chdir", "/"]
