"""The pool: pre-started workers (fork servers), a thread per worker, futures for callers.

Each worker is one Python process started once (inside bubblewrap where available); a
confined process is cloned per program (see `_worker`), so a run costs a clone, not an
interpreter start-up.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any

from sandbox._bwrap import BWRAP_ROOT, PKG_DIR, bwrap_argv
from sandbox._cgroup import Cgroups
from sandbox._compile import Compiler
from sandbox._isolation import IsolationReport, warn_lowest
from sandbox._worker import frame, write_msg
from sandbox.result import (
    LEVEL_FEATURES,
    Check,
    ExecResult,
    Isolation,
    IsolationError,
    Limits,
    Status,
    Suite,
    level_from_checks,
)

_MIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
# The worker imports only its own modules, not the package (whose __init__ pulls in this
# pool, threading and more): every module it holds makes each fork dearer, and threading's
# and random's after-fork hooks alone cost a program hundreds of page faults.
_BOOT = ("import sys, types; pkg = types.ModuleType('sandbox'); pkg.__path__ = [{pkg!r}]; "
         "sys.modules['sandbox'] = pkg; from sandbox._worker import main; main()")
_START_TIMEOUT_S = 60.0
_PIPELINE_MAX_BYTES = 16 << 10  # well under a pipe's 64 KiB
_REPLY_MARGIN_S = 30.0

_bwrap_broken: str | None = None  # why bubblewrap failed in this process, once it has
_min_level: Isolation | None = None  # set by require_isolation()
_lock = threading.Lock()


_uid_counter = 0
_uid_lock = threading.Lock()


def _next_uid() -> int:
    """A uid no account uses: high, derived from our pid, distinct per worker."""
    global _uid_counter
    with _uid_lock:
        _uid_counter += 1
        return 1_000_000_000 + (os.getpid() % 1_000_000) * 1024 + _uid_counter % 1024


def _host_namespaces() -> dict[str, str]:
    out = {}
    for ns in ("net", "pid", "ipc", "uts", "mnt"):
        try:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            pass
    return out


def _read_msg(fd: int, deadline: float, buf: bytearray | None = None) -> Any:
    """One JSON frame from `fd` before `deadline`, or None at end of file. `buf` keeps what
    was read beyond the frame (a worker's replies often arrive together)."""
    buf = bytearray() if buf is None else buf

    def fill(n: int) -> bool:
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return False
            buf.extend(chunk)
        return True

    if not fill(4):
        return None
    n = struct.unpack_from(">I", buf)[0]
    if not fill(4 + n):
        return None
    body = bytes(buf[4:4 + n])
    del buf[:4 + n]
    return json.loads(body)


class _Worker:
    """The pool's handle on one worker process."""

    def __init__(self, pool: Pool, slot: int) -> None:
        self.pool, self.slot = pool, slot
        self.proc: subprocess.Popen[bytes] | None = None
        self.checks: dict[str, Check] = {}
        self.level = Isolation.RLIMITS
        self.failed: tuple[str, ...] = ()
        self.host_root: str | None = None
        self.errfile: Any = None
        self.cgroups: Cgroups | None = None
        self.uid: int | None = None
        self.rbuf = bytearray()  # replies read ahead

    def _config(self, use_bwrap: bool) -> tuple[list[str], dict[str, Any]]:
        p = self.pool
        feats = {f for lvl in Isolation if lvl <= p.cap for f in LEVEL_FEATURES[lvl]}
        cfg: dict[str, Any] = {"features": sorted(feats | ({"cgroup"} if p.cg_bases else set())),
                               "protected_pids": [os.getpid()], "host_ns": p.host_ns,
                               "bwrap": use_bwrap,
                               "evaluator_memory_mb": p.limits.memory_mb,
                               "cpu": p.cpus[self.slot % len(p.cpus)] if p.cpus else None,
                               "bwrap_reason": p.bwrap_reason, "cgroup_reason": p.cg_reason}
        if os.geteuid() == 0 and p.cap >= Isolation.SECCOMP:
            # one uid per worker (never a real account), so RLIMIT_NPROC binds per worker
            # and programs of different workers cannot signal each other
            if self.uid is None:
                self.uid = _next_uid()
            cfg["uid"], cfg["gid"] = self.uid, self.uid
        if p.cg_bases:
            self.cgroups = self.cgroups or Cgroups.create_leaf(p.cg_version, p.cg_bases,
                                                               f"w{self.slot}")
            cfg["cgroup"] = {"version": self.cgroups.version, "leaves": self.cgroups.leaves}
        python = [sys.executable, "-I", "-c", _BOOT.format(pkg=PKG_DIR)]
        if use_bwrap:
            cfg["root"] = BWRAP_ROOT
            argv = bwrap_argv(p.limits.scratch_mb, self.cgroups.dirs() if self.cgroups else [])
            return argv + ["--"] + python, cfg
        if self.host_root is None:
            self.host_root = tempfile.mkdtemp(prefix="gbmpo-sandbox-")
        cfg["root"] = self.host_root
        return python, cfg

    def start(self) -> None:
        global _bwrap_broken
        if self.proc is not None:
            self.kill()  # a dead worker's pipes and process go first
        use_bwrap = self.pool.use_bwrap and _bwrap_broken is None
        try:
            self._spawn(use_bwrap)
        except _StartError as e:
            if not use_bwrap:
                raise
            with _lock:
                _bwrap_broken = f"bubblewrap failed to start the worker: {e}"
                self.pool.bwrap_reason = _bwrap_broken
            self._spawn(False)

    def _spawn(self, use_bwrap: bool) -> None:
        argv, cfg = self._config(use_bwrap)
        self.errfile = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errfile, env=dict(_MIN_ENV),
                                     start_new_session=True, close_fds=True)
        try:
            write_msg(self.proc.stdin.fileno(), cfg)
            reply = _read_msg(self.proc.stdout.fileno(), time.monotonic() + _START_TIMEOUT_S)
        except (OSError, TimeoutError):
            reply = None
        if reply is None:
            err = self._stderr_tail()
            self.kill()
            raise _StartError(err or "the worker exited without a word")
        self.checks = {n: Check(**c) for n, c in reply["checks"].items()}
        self.level = level_from_checks(self.checks)
        self.failed = tuple(f"{c.name}: {c.detail}" for c in self.checks.values() if not c.ok)

    def _stderr_tail(self) -> str:
        if self.errfile is None:
            return ""
        self.errfile.seek(0, os.SEEK_END)
        size = self.errfile.tell()
        self.errfile.seek(max(0, size - 2000))
        return self.errfile.read().decode("utf-8", "replace").strip()

    def encode(self, program: str, suite: Suite, limits: Limits) -> bytes:
        return b"".join(frame(part) for part in self.pool.compiler.encode(program, suite,
                                                                           limits))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, job: bytes) -> bool:
        """Queue a job on the worker (starting it if needed); False if the worker is dead."""
        if not self.alive():
            self.start()
        try:
            view = memoryview(job)
            while view:
                view = view[os.write(self.proc.stdin.fileno(), view):]
            return True
        except OSError:
            return False

    def receive(self, limits: Limits, t0: float) -> tuple[ExecResult, bool]:
        """The reply to the oldest job sent; (result, worker still alive)."""
        try:
            reply = _read_msg(self.proc.stdout.fileno(),
                              time.monotonic() + limits.timeout_s + _REPLY_MARGIN_S, self.rbuf)
            why = "the worker died during the run (the program may have killed it)"
        except (OSError, TimeoutError, ValueError, AttributeError) as e:
            reply, why = None, f"{type(e).__name__}: {e}"
        if reply is None:
            tail = self._stderr_tail()
            self.kill()
            return ExecResult(status=Status.SANDBOX_ERROR, passed=False,
                              wall_s=time.monotonic() - t0, isolation=self.level.name.lower(),
                              failed_checks=self.failed,
                              detail=why + (f"; worker stderr: {tail[-500:]}" if tail else "")
                              ), False
        status = Status(reply.pop("status"))
        return ExecResult(status=status, passed=status is Status.PASSED,
                          isolation=self.level.name.lower(), failed_checks=self.failed,
                          **reply), True

    def kill(self) -> None:
        self.rbuf.clear()
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for s in (self.proc.stdin, self.proc.stdout):
                try:
                    s.close()
                except OSError:
                    pass
            self.proc = None
        if self.errfile is not None:
            self.errfile.close()
            self.errfile = None

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()  # EOF: the worker finishes and exits
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        if self.host_root is not None:
            shutil.rmtree(self.host_root, ignore_errors=True)
            self.host_root = None


class _StartError(RuntimeError):
    pass


def _release(workers: list[_Worker], cg_bases: dict[str, str]) -> None:
    for w in workers:
        w.close()
    if cg_bases:
        Cgroups.remove_base(cg_bases)


class Pool:
    """Run programs against tests in parallel, each in a fresh confined process.

    `workers`: fork servers (default: the cores this process may use, from
    os.sched_getaffinity). `limits`: default per-run limits. `isolation`: the highest level
    to use (default: the best available; lower it to compare). `require_isolation`: refuse
    to start below this level (IsolationError). `pin_cpus`: keep each worker and its
    processes on one of those cores (round robin), which makes the evaluator's calls into
    the program cheaper; turn it off when other pools or jobs share the cores unevenly.
    """

    def __init__(self, workers: int | None = None, *, limits: Limits | None = None,
                 isolation: Isolation | str | None = None,
                 require_isolation: Isolation | str | None = None,
                 pin_cpus: bool = True) -> None:
        self._done = False
        self._closed = False
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self.cg_bases: dict[str, str] = {}
        allowed = sorted(os.sched_getaffinity(0))  # the cores this process may use
        if workers is None:
            workers = len(allowed)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.n = workers
        # Each worker's processes (worker, zygote, evaluator, programs) share one core, so
        # a call from the evaluator into the program wakes a process on the same core: no
        # cross-core wake-up (an inter-processor interrupt, dear on virtual machines).
        self.cpus = allowed if pin_cpus else []
        self.limits = limits or Limits()
        self.cap = Isolation.parse(isolation) if isolation is not None else Isolation.NAMESPACES
        required = require_isolation if require_isolation is not None else _min_level
        self.required = Isolation.parse(required) if required is not None else None
        if self.required is not None and self.cap < self.required:
            raise IsolationError(f"isolation capped at {self.cap.name.lower()} but "
                                 f"{self.required.name.lower()} is required")
        self.host_ns = _host_namespaces()
        self.bwrap_reason = _bwrap_broken or ""
        self.use_bwrap = False
        if self.cap >= Isolation.NAMESPACES:
            if shutil.which("bwrap") is None:
                self.bwrap_reason = "bubblewrap (bwrap) is not installed"
            elif _bwrap_broken is None:
                self.use_bwrap = True
        else:
            self.bwrap_reason = "not requested (isolation level capped)"
        self.cg_version, self.cg_bases, self.cg_reason = 0, {}, ""
        try:
            self.cg_version, self.cg_bases = Cgroups.create_base()
        except (OSError, ValueError) as e:
            self.cg_reason = f"no writable cgroup hierarchy: {e}"
        self._queue: queue.Queue[Any] = queue.Queue()
        self.compiler = Compiler()
        self._workers = [_Worker(self, i) for i in range(self.n)]
        # a pool that is never closed still leaves no processes, directories or cgroups
        self._finalizer = weakref.finalize(self, _release, list(self._workers), self.cg_bases)
        # Each worker is started by the thread that serves it for the pool's lifetime: the
        # kernel's parent-death signal (which bubblewrap and the worker rely on) follows the
        # *thread* that forked, so a short-lived starter thread would kill its worker.
        self._settled = threading.Event()
        self._started = [threading.Event() for _ in self._workers]
        self._start_errors: list[BaseException] = []
        for w in self._workers:
            t = threading.Thread(target=self._serve, args=(w,), daemon=True,
                                 name=f"sandbox-worker-{w.slot}")
            t.start()
            self._threads.append(t)
        for ev in self._started:
            ev.wait()
        try:
            if self._start_errors:
                raise self._start_errors[0]
            self.level = min(w.level for w in self._workers)
            self.checks = self._workers[0].checks
            if self.required is not None:
                self.report.require(self.required, "this Pool (require_isolation)")
        except BaseException:
            self.close()
            raise
        if self.level == Isolation.RLIMITS:
            warn_lowest(self.checks)

    @property
    def report(self) -> IsolationReport:
        return IsolationReport(self.level, dict(self.checks))

    def _serve(self, worker: _Worker) -> None:
        try:
            if worker.slot > 0:
                self._settled.wait()  # worker 0 settles whether bubblewrap works here
            worker.start()
        except BaseException as e:  # re-raised by __init__
            self._start_errors.append(e)
        finally:
            if worker.slot == 0:
                self._settled.set()
            self._started[worker.slot].set()
        # Up to two jobs are in flight per worker, so the worker starts the next program
        # the moment it has answered the last, without waiting for this thread to wake up.
        # A job is queued behind another only when it is small: the pipe then holds it
        # without blocking, and a large reply can never deadlock against it.
        pending: deque[list[Any]] = deque()  # [future, limits, job bytes, sent, t0, tries]
        stopping = False
        while True:
            while not stopping and len(pending) < 2:
                try:
                    item = self._queue.get(block=not pending)
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                fut, program, tests, limits = item
                if fut.set_running_or_notify_cancel():
                    pending.append([fut, limits, worker.encode(program, tests, limits),
                                    False, 0.0, 0])
            if not pending:
                if stopping:
                    return
                continue
            for i, entry in enumerate(pending):
                if entry[3]:
                    continue
                if i > 0 and len(entry[2]) > _PIPELINE_MAX_BYTES:
                    break
                entry[4], entry[5] = time.monotonic(), entry[5] + 1
                try:
                    entry[3] = worker.send(entry[2])
                except BaseException as e:  # the worker cannot be (re)started
                    entry[0].set_exception(e)
                    pending.remove(entry)
                    break
                if not entry[3]:
                    break
            if not pending:
                continue
            head = pending[0]
            if not head[3]:  # could not hand it over: start the worker afresh, or give up
                worker.kill()
                if head[5] >= 3:
                    pending.popleft()
                    head[0].set_result(ExecResult(
                        status=Status.SANDBOX_ERROR, passed=False, wall_s=0.0,
                        isolation=worker.level.name.lower(), failed_checks=worker.failed,
                        detail="could not hand the job to a sandbox worker (3 tries)"))
                continue
            fut, limits, _, _, t0, _ = pending.popleft()
            try:
                result, alive = worker.receive(limits, t0)
            except BaseException as e:  # delivered to the caller
                fut.set_exception(e)
                continue
            fut.set_result(result)
            if not alive:  # jobs queued on the dead worker never ran: send them again
                for entry in pending:
                    entry[3] = False

    def submit(self, program: str, tests: Suite | Sequence[str],
               limits: Limits | None = None) -> Future[ExecResult]:
        """Run `program` against `tests`: a `Suite`, or test strings (a Suite with the
        entry points found automatically)."""
        if self._closed:
            raise RuntimeError("this sandbox Pool is closed")
        fut: Future[ExecResult] = Future()
        self._queue.put((fut, program, Suite.of(tests), limits or self.limits))
        return fut

    def map(self, programs: Iterable[str], tests: Iterable[Suite | Sequence[str]],
            limits: Limits | None = None) -> list[ExecResult]:
        """Results in input order; `programs` and `tests` are zipped (equal lengths)."""
        programs, tests = list(programs), list(tests)
        if len(programs) != len(tests):
            raise ValueError(f"{len(programs)} programs but {len(tests)} test lists")
        futs = [self.submit(p, t, limits) for p, t in zip(programs, tests, strict=True)]
        futures_wait(futs)  # one wake-up when all are done, not one per result
        return [f.result() for f in futs]

    def close(self) -> None:
        """Finish queued work, stop the workers, remove scratch and cgroups. Idempotent."""
        if getattr(self, "_done", True):
            return
        self._done = self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
        self._threads = []
        if hasattr(self, "_finalizer"):
            self._finalizer()
        self._workers = []

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


# ------------------------------------------------------------------------- module helpers
_default_pool: Pool | None = None
_default_lock = threading.Lock()
_detected: dict[Isolation, IsolationReport] = {}


def detect(isolation: Isolation | str | None = None) -> IsolationReport:
    """Start a worker, try every feature, report the level (cached per process)."""
    cap = Isolation.parse(isolation) if isolation is not None else Isolation.NAMESPACES
    with _lock:
        if cap in _detected:
            return _detected[cap]
    with Pool(1, isolation=cap, require_isolation=Isolation.RLIMITS) as p:
        rep = p.report
    with _lock:
        _detected[cap] = rep
    return rep


def require_isolation(level: Isolation | str) -> IsolationReport:
    """Refuse, from now on in this process, to run programs below `level`; raises
    IsolationError at once if this machine cannot reach it."""
    global _min_level
    lvl = Isolation.parse(level)
    rep = detect()
    rep.require(lvl, "require_isolation()")
    _min_level = lvl
    return rep


def run(program: str, tests: Suite | Sequence[str], limits: Limits | None = None
        ) -> ExecResult:
    """Run one program against its tests in a shared one-worker pool (started on first
    use, stopped at exit). For many programs, use `Pool` directly."""
    global _default_pool
    with _default_lock:  # not `_lock`: a starting pool's threads take that one
        if _default_pool is None or (_min_level is not None
                                     and _default_pool.level < _min_level):
            if _default_pool is not None:
                _default_pool.close()
            _default_pool = Pool(1)
            atexit.register(_default_pool.close)
        pool = _default_pool
    return pool.submit(program, tests, limits).result()
