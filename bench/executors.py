"""Executors: run grid cells as subprocesses; the local one lives here, Ray's in
`bench.ray_executor` (sharing the launcher, locks and file helpers below).

Each cell is one process running the cell command (by default `python -m gbmpo train --config
CELL.toml --out CELL_DIR`), so a crash, hang or OOM takes down one cell and nothing else. The
process starts through a tiny launcher that arms PR_SET_PDEATHSIG=SIGKILL and then `exec`s the
command: if the runner (or the Ray worker) is killed, the cell dies with it instead of living on
as an orphan that writes results nobody is waiting for.

An executor is given jobs and a callback; it calls `on_done(job, outcome)` once per job it ran
(never for jobs it had to abandon on Ctrl-C) and re-raises the interrupt after killing what runs.
Reading the cell's result and recording failures is the runner's job, not the executor's.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.grid import Cell, Resources

PYTHON = "{python}"  # replaced by the interpreter running the executor (or the Ray worker)
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
_UMASK = os.umask(0o022)
os.umask(_UMASK)

# Runs as `python -c LAUNCHER PARENT_PID ARGV...`. prctl survives execve, so the real command
# inherits the death signal. If the parent died before prctl, getppid() has changed: give up.
LAUNCHER = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass  # not Linux: only the runner's own cleanup protects against orphans
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)
os.execvp(sys.argv[2], sys.argv[2:])
"""


@dataclass(frozen=True)
class CellCommand:
    """Argument vectors for the trainer. `train` gets `--config PATH --out DIR` appended,
    `pretrain` (None: no warm-up step) gets `--config PATH`. `{python}` is the interpreter."""

    train: tuple[str, ...] = (PYTHON, "-m", "gbmpo", "train")
    pretrain: tuple[str, ...] | None = (PYTHON, "-m", "gbmpo", "pretrain", "--resolve")

    def train_argv(self, config: Path, out: Path) -> list[str]:
        return _resolve(self.train) + ["--config", str(config), "--out", str(out)]

    def pretrain_argv(self, config: Path) -> list[str] | None:
        return None if self.pretrain is None else _resolve(self.pretrain) + ["--config",
                                                                              str(config)]


DEFAULT_COMMAND = CellCommand()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _resolve(argv: Sequence[str]) -> list[str]:
    return [sys.executable if a == PYTHON else a for a in argv]


@dataclass
class Job:
    cell: Cell
    cell_dir: Path
    resources: Resources


@dataclass
class Outcome:
    """How a cell's process ended. `returncode` < 0 is a signal; None means it never ran."""

    returncode: int | None
    timed_out: bool = False
    busy: bool = False  # another runner holds this cell's lock; it was not started here
    wall_s: float = 0.0
    error: str | None = None  # executor-level failure (e.g. a Ray task that raised)
    host: str = field(default_factory=socket.gethostname)


OnDone = Callable[[Job, Outcome], None]


# ---- files -------------------------------------------------------------------------------
def atomic_write(path: Path, data: bytes | str) -> None:
    """Write via a temp file in the same directory, fsync, rename, fsync the directory: a reader
    (or a crash) sees the old file or the new one, never a torn one."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def clear_cell_dir(cell_dir: Path) -> None:
    """Remove a previous attempt's files (keeping the lock) so a rerun starts clean."""
    for p in cell_dir.iterdir():
        if p.name == ".lock":
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


class CellLock:
    """flock on CELL_DIR/.lock. The runner takes it before starting a cell and hands the same
    open file to the cell process, so it stays held while either is alive: two runners never
    run one cell at once, and a dead runner's cell (if it survived) still blocks a rerun."""

    def __init__(self, cell_dir: Path) -> None:
        cell_dir.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(cell_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            self.release()
            return False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing our copy; the lock ends when the cell's copy closes too
            self.fd = None


# ---- processes ---------------------------------------------------------------------------
def cell_env(resources: Resources) -> dict[str, str]:
    """Environment for a cell: thread pools sized to its CPU share unless the user set them."""
    env = dict(os.environ)
    threads = str(max(1, int(resources.num_cpus)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


def start_process(argv: list[str], log_path: Path, *, env: dict[str, str] | None = None,
                  pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """Start `argv` through the launcher in its own session, stdout+stderr to `log_path`."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(os.getpid()), *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, pass_fds=tuple(pass_fds))


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the cell's process group, SIGKILL it after `grace_s`, reap the leader."""
    _killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _killpg(proc.pid, signal.SIGKILL)  # descendants that outlived the leader share its group


def run_to_end(argv: list[str], log_path: Path, timeout_s: float, *,
               env: dict[str, str] | None = None) -> Outcome:
    """Blocking form of start_process: wait, kill on timeout."""
    t0 = time.monotonic()
    proc = start_process(argv, log_path, env=env)
    try:
        rc = proc.wait(timeout_s)
        _killpg(proc.pid, signal.SIGKILL)  # stray descendants, if any
        return Outcome(rc, wall_s=time.monotonic() - t0)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return Outcome(proc.returncode, timed_out=True, wall_s=time.monotonic() - t0)
    except BaseException:
        kill_group(proc, grace_s=1.0)
        raise


# ---- local -------------------------------------------------------------------------------
@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    lock: CellLock
    started: float


class LocalExecutor:
    """`workers` cells at a time on this machine, each a subprocess with its own lock and
    timeout. Processes are started and polled from the calling thread only (PR_SET_PDEATHSIG
    fires when the *thread* that forked the child exits)."""

    def __init__(self, workers: int = 1, command: CellCommand = DEFAULT_COMMAND,
                 poll_s: float = 0.05) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers, self.command, self.poll_s = workers, command, poll_s

    def prepare(self, jobs: list[Job], log_dir: Path) -> None:
        """Build the cached base model once per distinct [model]+[pretrain] config, so parallel
        cells do not all queue on the trainer's pretrain lock. Raises RuntimeError on failure."""
        if self.command.pretrain is None:
            return
        seen: dict[str, Job] = {}
        for job in jobs:
            cfg = job.cell.config
            seen.setdefault(f"{cfg.model}|{cfg.pretrain}", job)
        with tempfile.TemporaryDirectory(prefix="gbmpo-pretrain-") as tmp:
            for i, (key, job) in enumerate(seen.items()):
                cfg_path = Path(tmp) / f"pretrain-{i}.toml"
                cfg_path.write_text(job.cell.config.to_toml())
                argv = self.command.pretrain_argv(cfg_path) or []
                log = log_dir / f"pretrain-{_short_hash(key)}.log"
                log_dir.mkdir(parents=True, exist_ok=True)
                print(f"preparing the base model for {job.cell.config.model.name!r} "
                      f"(cached after the first time; log {log})", file=sys.stderr, flush=True)
                # nothing else runs yet: pretraining gets every core, not one cell's share
                out = run_to_end(argv, log, job.resources.timeout_s, env=dict(os.environ))
                if out.returncode != 0:
                    what = "timed out" if out.timed_out else f"exited with {out.returncode}"
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                    raise RuntimeError(f"pretraining for {job.cell.cell_id} {what}; log {log}:"
                                       f"\n{tail}")

    def execute(self, jobs: list[Job], on_done: OnDone) -> None:
        pending, running = deque(jobs), []
        with tempfile.TemporaryDirectory(prefix="gbmpo-cells-") as tmp:
            try:
                while pending or running:
                    while pending and len(running) < self.workers:
                        job = pending.popleft()
                        started = self._start(job, Path(tmp))
                        if started is None:
                            on_done(job, Outcome(None, busy=True))
                        else:
                            running.append(started)
                    for r in list(running):
                        rc = r.proc.poll()
                        elapsed = time.monotonic() - r.started
                        timed_out = rc is None and elapsed > r.job.resources.timeout_s
                        if timed_out:
                            kill_group(r.proc)
                            rc = r.proc.returncode
                        if rc is not None:
                            running.remove(r)
                            _killpg(r.proc.pid, signal.SIGKILL)  # stray descendants, if any
                            try:
                                on_done(r.job, Outcome(rc, timed_out=timed_out, wall_s=elapsed))
                            finally:
                                r.lock.release()
                    time.sleep(self.poll_s)
            except BaseException:
                for r in running:  # Ctrl-C or an error: no cell outlives the runner
                    kill_group(r.proc, grace_s=2.0)
                    r.lock.release()
                raise

    def _start(self, job: Job, tmp: Path) -> _Running | None:
        lock = CellLock(job.cell_dir)
        if not lock.acquire():
            return None
        try:
            clear_cell_dir(job.cell_dir)
            cfg_path = tmp / f"{job.cell.cell_id}.toml"
            cfg_path.write_text(job.cell.config.to_toml())
            argv = self.command.train_argv(cfg_path, job.cell_dir)
            proc = start_process(argv, job.cell_dir / "log.txt", env=cell_env(job.resources),
                                 pass_fds=(lock.fd,))
        except BaseException:
            lock.release()
            raise
        return _Running(job, proc, lock, time.monotonic())
