"""Per-worker cgroups for process-count and memory limits (needs write access to cgroupfs).

cgroup v2 is preferred (pids + memory controllers); on hosts still on the v1 hierarchies the
`pids` and `memory` v1 controllers are used instead. The pool creates one base directory per
pool and one leaf per worker. The worker joins its leaf once at start-up, so every program it
forks is born inside (no per-run migration, which costs milliseconds on v1) and everything a
program starts is counted against the leaf's limits.
"""

from __future__ import annotations

import os
import signal


def _read(path: str) -> str:
    """A kernel file, read with a few system calls (open() would add five more)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 1 << 16)]
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 16))
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _mounts() -> list[tuple[str, str, str, str]]:
    """(fstype, mountpoint, root-within-hierarchy, super options) for cgroup mounts."""
    out = []
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if rf and rf[0] in ("cgroup", "cgroup2"):
            out.append((rf[0], lf[4], lf[3], rf[2] if len(rf) > 2 else ""))
    return out


def _own_dir(mountpoint: str, mount_root: str, cg_path: str) -> str:
    if mount_root != "/" and cg_path.startswith(mount_root):
        cg_path = cg_path[len(mount_root):] or "/"
    return os.path.join(mountpoint, cg_path.lstrip("/"))


class Cgroups:
    """Leaf directories of one worker: {"pids": dir, "memory": dir} (the same dir on v2)."""

    def __init__(self, version: int, leaves: dict[str, str]) -> None:
        self.version, self.leaves = version, leaves

    # ----------------------------------------------------------------- creation (pool side)
    @staticmethod
    def create_base() -> tuple[int, dict[str, str]]:
        """Make a fresh base directory per controller; returns (version, {controller: dir}).
        Raises OSError with the reason when neither v2 nor v1 pids+memory is writable."""
        own = {}
        for line in _read("/proc/self/cgroup").splitlines():
            hid, ctrls, path = line.split(":", 2)
            own[ctrls] = path
        name = f"gbmpo-sandbox-{os.getpid()}-{os.urandom(4).hex()}"
        errors = []
        mounts = _mounts()
        for fstype, mnt, root, _ in mounts:
            if fstype != "cgroup2" or "" not in own:
                continue
            parent = _own_dir(mnt, root, own[""])
            try:
                avail = _read(os.path.join(parent, "cgroup.controllers")).split()
                missing = {"pids", "memory"} - set(avail)
                if missing:
                    raise OSError(f"cgroup v2 at {parent} lacks controllers {sorted(missing)}")
                enabled = _read(os.path.join(parent, "cgroup.subtree_control")).split()
                if not {"pids", "memory"} <= set(enabled):
                    _write(os.path.join(parent, "cgroup.subtree_control"), "+pids +memory")
                base = os.path.join(parent, name)
                os.mkdir(base)
                try:
                    _write(os.path.join(base, "cgroup.subtree_control"), "+pids +memory")
                except OSError:
                    os.rmdir(base)
                    raise
                return 2, {"pids": base, "memory": base}
            except OSError as e:
                errors.append(f"v2: {e}")
        bases: dict[str, str] = {}
        for ctrl in ("pids", "memory"):
            for fstype, mnt, root, opts in mounts:
                if fstype != "cgroup" or ctrl not in opts.split(","):
                    continue
                key = next((k for k in own if ctrl in k.split(",")), None)
                if key is None:
                    continue
                base = os.path.join(_own_dir(mnt, root, own[key]), name)
                try:
                    os.mkdir(base)
                    bases[ctrl] = base
                except OSError as e:
                    errors.append(f"v1 {ctrl}: {e}")
                break
        if set(bases) == {"pids", "memory"}:
            return 1, bases
        for b in bases.values():
            os.rmdir(b)
        if not errors:
            errors.append("no cgroup hierarchy with pids and memory controllers is mounted")
        raise OSError("; ".join(errors))

    @classmethod
    def create_leaf(cls, version: int, bases: dict[str, str], name: str) -> Cgroups:
        leaves = {}
        for ctrl, base in bases.items():
            leaf = os.path.join(base, name)
            if not os.path.isdir(leaf):
                os.mkdir(leaf)
            leaves[ctrl] = leaf
        return cls(version, leaves)

    @staticmethod
    def remove_base(bases: dict[str, str], wait_s: float = 5.0) -> None:
        """Remove the leaves and the base, killing stragglers (a worker that is still
        exiting keeps its leaf busy for a moment)."""
        import time

        deadline = time.monotonic() + wait_s
        for base in set(bases.values()):
            leaves = [e.path for e in os.scandir(base) if e.is_dir()]
            for path in leaves + [base]:
                while True:
                    try:
                        os.rmdir(path)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            break
                        Cgroups(1, {"pids": path}).kill_all(rounds=1)
                        time.sleep(0.02)

    # ----------------------------------------------------------------- worker side
    def dirs(self) -> list[str]:
        return sorted(set(self.leaves.values()))

    def set_limits(self, memory_bytes: int, max_pids: int) -> None:
        if self.version == 2:
            _write(os.path.join(self.leaves["memory"], "memory.max"), str(memory_bytes))
            swap = os.path.join(self.leaves["memory"], "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")
        else:
            _write(os.path.join(self.leaves["memory"], "memory.limit_in_bytes"), str(memory_bytes))
        _write(os.path.join(self.leaves["pids"], "pids.max"), str(max_pids))

    def join_self(self) -> None:
        """Move the calling process into every leaf (the worker, once, at start-up)."""
        for d in self.dirs():
            _write(os.path.join(d, "cgroup.procs"), "0")

    def has(self, pid: int) -> bool:
        """Is `pid` in every leaf?"""
        for d in self.dirs():
            try:
                if str(pid) not in _read(os.path.join(d, "cgroup.procs")).split():
                    return False
            except OSError:
                return False
        return True

    def procs(self) -> list[int]:
        pids: set[int] = set()
        for d in self.dirs():
            try:
                pids.update(int(x) for x in _read(os.path.join(d, "cgroup.procs")).split())
            except OSError:
                pass
        return sorted(pids)

    def kill_all(self, rounds: int = 200) -> bool:
        """SIGKILL everything in the leaves except the calling worker; True when nothing else
        is left. (cgroup.kill cannot be used: the worker itself lives in the leaf.)"""
        me = os.getpid()
        for _ in range(rounds):
            pids = [p for p in self.procs() if p != me]
            if not pids:
                return True
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            os.sched_yield()
        return False

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in _read(os.path.join(self.leaves["memory"], name)).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0
