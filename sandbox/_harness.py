"""What runs in a program's process: the last confinement steps, then the program. Nothing
here returns to the worker: every path ends in `os._exit`.

Two modes, chosen per job:

- proxy (the default): the program runs here and serves calls from the trusted evaluator,
  which runs the tests in its own process and alone decides the verdict (`_program`,
  `_evaluator`). This process holds no nonce and no channel to the worker.
- in-process (a declared fallback for tests that need the program's own objects): the
  program and then the tests run here, as in every classic harness, and the only pass
  signal is b"P" + nonce + test count, written to fd 3 after the last test returned; a
  failure is b"F" + JSON, a setup failure b"S" + text. The 16-byte nonce is drawn by the
  worker for this run only; exit codes, atexit hooks and writes to any inherited fd cannot
  produce it. Code in this process can read its memory, though: see docs/sandbox.md.
"""

from __future__ import annotations

import builtins
import fcntl
import marshal
import os
import resource
import sys
import traceback
import types
from collections.abc import Callable

from sandbox import _job, _linux, _program

TYPE_CHECKING = False  # typing is not imported at run time: every process is leaner
if TYPE_CHECKING:
    from typing import Any

SIGNAL_FD = 3  # in-process mode: the pass signal to the worker
REQUEST_FD, REPLY_FD = 4, 5  # proxy mode: calls from the evaluator, replies to it
# where a program's process finds (signal, request, reply, job, stdout, stderr) when the
# zygote received them in this order into its lowest free fds
PLACED = (3, 4, 5, 6, 7, 8)
SETUP_FAILED_EXIT = 121
_MB = 1 << 20
# limits that do not depend on the job: no core dumps, locked memory or message queues
FIXED_LIMITS = ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_MEMLOCK, 0),
                (resource.RLIMIT_MSGQUEUE, 0))


class Confinement:
    """Prepared once per worker. The job-independent steps (privilege drop, Landlock,
    seccomp) are applied either once to the zygote, whose children inherit them
    (`inherited`), or in each child; rlimits are always set by the child, from its job's
    limits (soft = hard, so the program cannot raise them). Each step is skipped when its
    feature is off (it failed its start-up check or is above the requested level)."""

    def __init__(self, *, uid: int | None, gid: int | None, nproc_base: int,
                 landlock_fd: int | None, seccomp: _linux.SeccompProgram | None) -> None:
        self.uid, self.gid, self.nproc_base = uid, gid, nproc_base
        # Set when the Python installation is not readable by the per-worker uid (e.g. a
        # root-owned pyenv under /root, mode 0700): the program then keeps the one capability
        # CAP_DAC_READ_SEARCH. Landlock, where in force, still confines reads to the allowlist.
        self.keep_read_search = False
        self.landlock_fd, self.seccomp = landlock_fd, seccomp
        # A Landlock ruleset that only scopes signals and abstract sockets (ABI >= 6): a
        # program's process enters it as a nested domain, so it cannot signal or trace the
        # evaluator, which stays in the outer one.
        self.scope_fd: int | None = None
        self.scoped = False  # entered already (by the zygote, for all its children)
        self.fixed_set = False  # FIXED_LIMITS set already (by the zygote, inherited)
        self.inherited = False  # the zygote applied drop, Landlock and seccomp already
        self.pdeathsig = True  # without a PID namespace, die when the worker dies

    def _drop(self) -> None:
        if self.keep_read_search:
            _linux.prctl(_linux.PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)
        if os.getuid() != self.uid or os.geteuid() != self.uid:
            raise OSError("uid did not change")
        if self.keep_read_search:
            _linux.set_capabilities(1 << _linux.CAP_DAC_READ_SEARCH)

    def apply_early(self, probe: dict[str, str] | None = None) -> None:
        """Privilege drop and Landlock (job-independent)."""
        if self.uid is not None:
            _step("unprivileged", self._drop, probe)
        if self.landlock_fd is not None:
            _step("landlock", lambda: _linux.landlock_restrict_self(self.landlock_fd), probe)

    def set_rlimits(self, limits: tuple[int, ...], probe: dict[str, str] | None = None) -> None:
        cpu, memory_mb, max_processes, file_size_mb, open_files, _ = limits
        # A dropped uid is shared with the zygote and the evaluator; a caller's own uid with
        # all its processes.
        nproc = max_processes + (2 if self.uid is not None else self.nproc_base)
        setrlimit = resource.setrlimit  # inline: every frame a new process enters costs pages
        try:
            for res, val in ((resource.RLIMIT_AS, memory_mb * _MB),
                             (resource.RLIMIT_DATA, memory_mb * _MB),
                             (resource.RLIMIT_FSIZE, file_size_mb * _MB),
                             (resource.RLIMIT_NOFILE, open_files),
                             (resource.RLIMIT_NPROC, nproc),
                             *(() if self.fixed_set else FIXED_LIMITS)):
                setrlimit(res, (val, val))
            setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
        except Exception as e:
            if probe is None:
                raise
            probe["rlimits"] = f"{type(e).__name__}: {e}"

    def set_evaluator_limits(self, memory_mb: int, open_files: int) -> None:
        """The evaluator's own limits: memory and files; no CPU limit (it lives across jobs;
        the worker's wall clock bounds each job) and no new processes."""
        for res, val in ((resource.RLIMIT_AS, memory_mb * _MB),
                         (resource.RLIMIT_DATA, memory_mb * _MB),
                         (resource.RLIMIT_NOFILE, open_files), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_MEMLOCK, 0), (resource.RLIMIT_MSGQUEUE, 0),
                         (resource.RLIMIT_FSIZE, 0)):
            resource.setrlimit(res, (val, val))

    def install_seccomp(self, probe: dict[str, str] | None = None) -> None:
        if self.seccomp is not None:
            _step("seccomp", self.seccomp.install, probe)


def _step(name: str, fn: Callable[[], None], probe: dict[str, str] | None) -> None:
    """Run one confinement step. With `probe` given (start-up checks), record its error
    there instead of raising."""
    try:
        fn()
    except Exception as e:  # reported, or re-raised below
        if probe is None:
            raise
        probe[name] = f"{type(e).__name__}: {e}"


def child_main(*, job_fd: int, fds: tuple[int, ...], scratch: str, conf: Confinement,
               probe: Callable[[dict[str, str]], bytes] | None = None) -> None:
    """Entry point of a program's process. It is created ahead of time (a spare), prepares
    what does not depend on the job, blocks reading its job from `job_fd`, confines itself
    and runs it. `fds`: /dev/null, stdout, stderr, the signal pipe and the two pipes to the
    evaluator. With `probe`, it reports the start-up checks instead. Never returns."""
    res: dict[str, str] | None = {} if probe is not None else None
    try:
        os.setsid()  # own session and process group: the worker kills the group as a whole
        null_fd, out_w, err_w, sig_w, req_r, rep_w = fds
        if conf.inherited and (sig_w, req_r, rep_w, job_fd, out_w, err_w) == PLACED:
            # the zygote received them in place (see `_zygote`): only stdio to arrange
            for src, dst in ((null_fd, 0), (out_w, 1), (err_w, 2)):
                os.dup2(src, dst)
        else:
            # first out of the way of the targets (a received fd may sit on 3-5), then in
            # place; and nothing else stays open: not the worker's ends of these pipes (a
            # forked child holds them too), only the job and the rulesets still needed
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in fds]
            job_fd = fcntl.fcntl(job_fd, fcntl.F_DUPFD_CLOEXEC, 64)
            for dst, src in enumerate(high):
                os.dup2(src, dst, inheritable=dst < SIGNAL_FD)
            _close_except({job_fd} | {fd for fd in (conf.landlock_fd, conf.scope_fd)
                                      if fd is not None}, REPLY_FD + 1)
        os.chdir(scratch)
        if conf.pdeathsig:
            _linux.prctl(_linux.PR_SET_PDEATHSIG, 9)
        if not conf.inherited:
            conf.apply_early(res)
        job = os.read(job_fd, 1 << 20)
        if not job:  # the worker is shutting down; this spare was never used
            os._exit(0)
        more = []
        while chunk := os.read(job_fd, 1 << 20):
            more.append(chunk)
        limits, mode, nonce, parts = _job.decode_program_job(b"".join([job, *more]) if more
                                                             else job)
        conf.set_rlimits(limits, res)
        if not conf.inherited:
            conf.install_seccomp(res)
        if mode == _job.PROXY:
            if conf.scope_fd is not None and not conf.scoped:
                _linux.landlock_restrict_self(conf.scope_fd)
            os.close(SIGNAL_FD)  # from here on, this process never speaks to the worker
            keep = REPLY_FD
        else:
            keep = SIGNAL_FD
        os.closerange(keep + 1, 1 << 16)  # worker pipes, ruleset fds: nothing else leaks
    except BaseException as e:  # any setup failure is the sandbox's fault
        try:
            os.write(SIGNAL_FD, b"S" + f"{type(e).__name__}: {e}".encode()[:2000])
        finally:
            os._exit(SETUP_FAILED_EXIT)
    if probe is not None:
        try:
            os.write(SIGNAL_FD, probe(res or {}))
        finally:
            os._exit(0)
    program = parts[0].decode("utf-8", "surrogatepass")
    program_setup = parts[1].decode("utf-8", "surrogatepass")
    names = parts[2].decode().split("\n") if parts[2] else []
    if mode == _job.PROXY:
        _program.serve(program, program_setup, names, REQUEST_FD, REPLY_FD, limits[5] * _MB)
    _execute(program, program_setup, parts[3], parts[4:], nonce)


def _close_except(keep: set[int], lo: int) -> None:
    for fd in sorted(keep) + [1 << 16]:
        if fd > lo:
            os.closerange(lo, fd)
        lo = max(lo, fd + 1)


def set_process_state(scratch: str) -> None:
    """Called once in the worker: what every program inherits. The environment is minimal
    (the caller's is never passed down); HOME and TMPDIR are the scratch directory; the
    standard streams are fds 0-2, which each child points at /dev/null and its pipes."""
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", HOME=scratch,
                      TMPDIR=scratch)
    sys.stdin = open(0, encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.argv = [""]


def _classify(e: BaseException) -> str:
    if isinstance(e, AssertionError):
        return "failed"
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, SystemExit):
        return "exited"
    return "error"


def _describe(e: BaseException) -> str:
    try:
        msg = str(e)
    except BaseException:  # a hostile __str__
        msg = "<unprintable>"
    return f"{type(e).__name__}: {msg}"[:500] if msg else type(e).__name__


def _load(item: bytes, label: str) -> Any:
    if item[:1] == b"M":
        return marshal.loads(item[9:])
    return compile(item[1:].decode("utf-8", "surrogatepass"), label, "exec")


def _execute(program: str, program_setup: str, setup: bytes, tests: list[bytes],
             nonce: bytes) -> None:
    """The in-process fallback: the task's setup, the program, its setup and the tests
    share one namespace and one process."""
    import json  # here, not at module level: the zygote (and so every process) stays lean
    # Everything the harness needs after untrusted code starts is bound to locals first:
    # replacing builtins.exec, os.write or this module's globals cannot skip a test.
    exec_, write, exit_, compile_ = builtins.exec, os.write, os._exit, builtins.compile
    sig_fd = SIGNAL_FD
    out, err = sys.stdout, sys.stderr

    def report(kind: str, index: int | None, e: BaseException | None, msg: str = "") -> None:
        try:
            if e is not None:
                msg = _describe(e)
                tb = e.__traceback__.tb_next if e.__traceback__ else None  # skip our frame
                traceback.print_exception(type(e), e, tb, limit=-8, file=err)
            out.flush()
            err.flush()
        except BaseException:  # the program may have broken the streams
            pass
        try:
            write(sig_fd, b"F" + json.dumps({"kind": kind, "test": index, "detail": msg})
                  .encode()[:4000])
        finally:
            exit_(1)

    try:
        codes = tuple(_load(t, f"<test {i}>") for i, t in enumerate(tests))
        setup_code = _load(setup, "<setup>") if setup else None
    except BaseException as e:
        report("error", None, None, f"a test does not compile: {_describe(e)}")
    try:
        program_code = compile_(program, "<program>", "exec")
    except (SyntaxError, ValueError) as e:
        report("syntax_error", None, e)
    except BaseException as e:  # the compiler itself gave up: RecursionError, MemoryError
        report(_classify(e), None, e)
    module = types.ModuleType("solution")
    sys.modules["solution"] = module
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    if setup_code is not None:
        try:
            exec_(setup_code, namespace)
        except BaseException as e:
            report("error", None, None, f"the task's setup failed: {_describe(e)}")
    try:
        exec_(program_code, namespace)
    except BaseException as e:  # includes SystemExit: no test ran, no pass
        report(_classify(e), None, e)
    if program_setup:
        try:
            exec_(compile_(program_setup, "<program setup>", "exec"), namespace)
        except BaseException as e:
            report("error", None, None, f"the task's program setup failed: {_describe(e)}")
    for index, code in enumerate(codes):
        try:
            exec_(code, namespace)
        except BaseException as e:
            report(_classify(e), index, e)
    try:
        out.flush()
        err.flush()
    except BaseException:  # output is best effort; the verdict is not
        pass
    write(sig_fd, b"P" + nonce + str(len(codes)).encode())
    exit_(0)
