"""The fork server: a small pre-started process (inside bubblewrap where available) that
creates one confined process per program, keeps one trusted evaluator, watches each run,
and kills whatever a program leaves behind.

Protocol with the pool, over the worker's stdin/stdout: frames are a 4-byte big-endian length
and a body, JSON unless said otherwise. First the pool sends the configuration and the worker
answers with its start-up checks. Then each job is three frames: a JSON header {"limits",
"n_tests", "mode"}, the program's part and the evaluator's part (see `_job`), which the
worker forwards without decoding; each job is answered by one result.

Processes: the worker starts one *zygote* (`_zygote`: a lean interpreter of its own), which
drops privileges, applies Landlock, seccomp and the nested scope domain to itself once, and
from then on only creates programs' processes with clone(CLONE_PARENT): they inherit its
confinement for free and are still the worker's children (the worker waits for them, and
its subreaper sweep covers them). The worker forks the *evaluator* itself (once, and again
after it dies or retires), which confines itself outside the scope domain. Otherwise the
worker does not fork, which matters for speed: a fork write-protects every page of the
forking process, so a busy forker takes a copy-on-write fault for each page it touches
afterwards (about 200 per run, measured). Where raw clone() is not safe (not glibc >= 2.34),
or the programs would stay root, the worker forks each process itself and that process
confines itself.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import marshal
import os
import signal
import socket
import struct
import sys
import sysconfig
import time
from typing import Any, NamedTuple

from sandbox import _checks, _evaluator, _job, _linux, _zygote
from sandbox._cgroup import Cgroups
from sandbox._harness import Confinement, child_main, set_process_state
from sandbox._watch import SETUP_FAILED_EXIT, killpg, remove_tree, verdict, watch

_ZYGOTE_BOOT = ("import sys, types; pkg = types.ModuleType('sandbox'); pkg.__path__ = [{pkg!r}]; "
                "sys.modules['sandbox'] = pkg; from sandbox._zygote import main; main()")
_CGROUP_MEMORY_MARGIN = 256 << 20  # the worker's and the evaluator's memory, charged there too
_LEN = struct.Struct(">I")


# ------------------------------------------------------------------------------- framing
def read_frame(fd: int) -> bytes | None:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    return _read_exact(fd, _LEN.unpack(head)[0])


def read_msg(fd: int) -> Any:
    body = read_frame(fd)
    return None if body is None else json.loads(body)


def frame(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body


def write_msg(fd: int, obj: Any, raw: bytes = b"") -> None:
    """Write `obj` as one JSON frame, followed by `raw` (already framed bytes), at once."""
    data = memoryview(frame(json.dumps(obj).encode()) + raw)
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


# ------------------------------------------------------------------------------- worker
def _landlock_read_paths() -> list[str]:
    import site

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(site.getsitepackages())
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(sysconfig.get_paths()[key])
    paths.update(["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin",
                  "/etc/ld.so.cache", "/etc/localtime"])
    return sorted(p for p in paths if p and os.path.exists(p))


_RW_DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]


class Spare(NamedTuple):
    """A program's process created ahead of its job, and the worker's ends of its pipes."""

    pid: int
    out_r: int
    err_r: int
    sig_r: int
    job_w: int
    req_w: int  # the evaluator's ends of the program's channel, handed over with the job
    rep_r: int


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        root = cfg["root"]
        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o711)
        self.scratch_root = os.path.join(root, "scratch")
        self.outside = os.path.join(root, "outside")  # a writable place Landlock must guard
        for d in (self.scratch_root, self.outside):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.scratch_root, 0o711)
        os.chmod(self.outside, 0o777)
        # Always the same path (each run's tree is removed after it), so HOME and TMPDIR are
        # set once here and every program inherits them without extra work.
        self.scratch = os.path.join(self.scratch_root, "run")
        remove_tree(self.scratch)
        set_process_state(self.scratch)
        self.null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.spare: Spare | None = None
        self.zygote: socket.socket | None = None
        self.zygote_pid = -1
        self.zygote_errors: dict[str, str] = {}
        self.eval_sock: socket.socket | None = None
        self.eval_pid = -1
        self.eval_memory_mb = int(cfg.get("evaluator_memory_mb", 1024))
        self.protected = [os.getpid(), os.getppid(), 1] + list(cfg.get("protected_pids", []))
        self.feats = set(cfg["features"])
        self.errors: dict[str, str] = {}
        uid = gid = None
        if "unprivileged" in self.feats and cfg.get("uid") is not None:
            uid, gid = cfg["uid"], cfg["gid"]
        self.cgroups: Cgroups | None = None
        if "cgroup" in self.feats and cfg.get("cgroup"):
            # The worker joins once; programs are born inside, so no per-run migration.
            try:
                cg = Cgroups(cfg["cgroup"]["version"], cfg["cgroup"]["leaves"])
                cg.join_self()
                self.cgroups = cg
            except OSError as e:
                self.errors["cgroup"] = f"cannot join the worker's cgroup: {e}"
            try:  # the OOM killer should pick the program, not the worker
                with open("/proc/self/oom_score_adj", "w") as f:
                    f.write("-1000")
            except OSError:
                pass
        seccomp = landlock_fd = scope_fd = None
        if "seccomp" in self.feats:
            try:
                seccomp = _linux.SeccompProgram(_linux.build_seccomp_filter(self.protected))
            except OSError as e:
                self.errors["seccomp"] = str(e)
        self.landlock_abi = 0
        if "landlock" in self.feats:
            self.landlock_abi = _linux.landlock_abi()
            if self.landlock_abi <= 0:
                self.errors["landlock"] = "the kernel has no Landlock (or it is disabled at boot)"
            else:
                try:
                    landlock_fd = _linux.build_landlock_ruleset(
                        self.landlock_abi, _landlock_read_paths(), [self.scratch_root],
                        _RW_DEVICES)
                    scope_fd = _linux.build_landlock_scope(self.landlock_abi)
                except OSError as e:
                    self.errors["landlock"] = str(e)
        nproc_base = 0 if uid is not None else _count_own_processes() + 16
        self.conf = Confinement(uid=uid, gid=gid, nproc_base=nproc_base,
                                landlock_fd=landlock_fd, seccomp=seccomp)
        self.conf.scope_fd = scope_fd
        # far above the fds a new process rearranges (0-5), so none lands on them
        for name in ("landlock_fd", "scope_fd"):
            fd = getattr(self.conf, name)
            if fd is not None:
                setattr(self.conf, name, fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100))
                os.close(fd)
        self.conf.pdeathsig = not cfg.get("bwrap")  # in bwrap, the PID namespace dies with us
        if uid is not None:
            self.conf.keep_read_search = not _checks.uid_can_read_python(gid, uid)
        self._cg_limits: tuple[int, int] | None = None
        self.last_scratch = False
        self.to_reap: int | None = None  # a finished run's program, stopped but not reaped
        self._oom_kills = self.cgroups.oom_kills() if self.cgroups is not None else 0

    def start(self, protocol_fds: tuple[int, ...]) -> dict[str, dict[str, Any]]:
        """Start the zygote and the evaluator, run the start-up checks, and return them."""
        checks: dict[str, dict[str, Any]] = {}

        def put(name: str, ok: bool, detail: str) -> None:
            checks[name] = {"name": name, "ok": ok, "detail": detail}

        try:
            _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
            ok = _linux.get_child_subreaper()
            put("subreaper", ok, "orphans re-parent to the worker, which kills them"
                if ok else "PR_SET_CHILD_SUBREAPER did not stick")
        except OSError as e:
            put("subreaper", False, str(e))
        put(*_checks.check_namespaces(self.cfg))
        # Programs must not stay root with a filter that lets them set limits (see zygote).
        if _linux.clone_parent_supported() and not (os.geteuid() == 0 and self.conf.uid is None
                                                    and self.conf.seccomp is not None):
            self._start_zygote(protocol_fds)
        for name, (ok, detail) in _checks.run_probe(self).items():
            put(name, ok, detail)
        self.start_evaluator()
        gc.collect()
        gc.freeze()  # programs' collectors then leave the worker's objects (and pages) alone
        return checks

    # ------------------------------------------------------------------ zygote
    def _start_zygote(self, protocol_fds: tuple[int, ...]) -> None:
        """Start the zygote (see `_zygote`) as an interpreter of its own."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        actions = [(os.POSIX_SPAWN_DUP2, theirs.fileno(), _zygote.SOCKET_FD)]
        for fd, target in ((self.conf.landlock_fd, _zygote.LANDLOCK_FD),
                           (self.conf.scope_fd, _zygote.SCOPE_FD)):
            if fd is not None:
                actions.append((os.POSIX_SPAWN_DUP2, fd, target))
        boot = _ZYGOTE_BOOT.format(pkg=os.path.dirname(os.path.abspath(__file__)))
        sys.stderr.flush()
        try:
            pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", "-c", boot],
                                 dict(os.environ), file_actions=actions)
        except OSError as e:
            self.errors.setdefault("zygote", f"cannot start the zygote: {e}")
            return
        finally:
            theirs.close()
        try:
            ours.settimeout(60)
            ours.send(_zygote.config(
                self.conf, protected=self.protected, scratch=self.scratch,
                features=sorted(self.feats), outside=self.outside,
                landlock_abi=self.landlock_abi, sys_path=list(sys.path),
                probe_memory_mb=_checks.PROBE_LIMITS["memory_mb"]))
            self.zygote_errors = marshal.loads(ours.recv(1 << 16))
            ours.settimeout(None)
            if "_abort" in self.zygote_errors:
                raise ValueError(self.zygote_errors.pop("_abort"))
        except (OSError, ValueError, EOFError):
            self.zygote_errors = {}
            ours.close()
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        self.zygote, self.zygote_pid = ours, pid

    def _stop_zygote(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None
            try:
                os.kill(self.zygote_pid, signal.SIGKILL)
                os.waitpid(self.zygote_pid, 0)
            except OSError:
                pass
            self.zygote_pid = -1

    def _enter(self, kind: bytes, fds: list[int]) -> None:
        """What a new process becomes: the evaluator (b"E"), a program's process (b"J") or
        the start-up probe (b"P")."""
        if kind == b"E":
            self._evaluator_main(fds[0])
        sig_w, req_r, rep_w, job_r, out_w, err_w = fds  # in `_harness.PLACED` order
        child_main(job_fd=job_r, fds=(self.null_fd, out_w, err_w, sig_w, req_r, rep_w),
                   scratch=self.scratch, conf=self.conf,
                   probe=self._probe_report if kind == b"P" else None)

    def _probe_report(self, res: dict[str, str]) -> bytes:
        return _zygote.probe_report(res, sorted(self.feats), self.conf, self.outside,
                                    self.landlock_abi, _checks.PROBE_LIMITS["memory_mb"])

    def _spawn(self, kind: bytes, fds: list[int]) -> int:
        """A new confined process (through the zygote, else forked here); its pid. The
        evaluator is always forked here: it must stay outside the zygote's scope domain."""
        pid = -1
        if self.zygote is not None and kind != b"E":
            try:
                socket.send_fds(self.zygote, [kind], fds)
                reply = self.zygote.recv(16)
                pid = struct.unpack("=i", reply)[0] if len(reply) == 4 else -1
            except OSError:
                pid = -1
            if pid <= 0:  # the zygote is gone: fork ourselves from now on
                self._stop_zygote()
        if pid <= 0:
            sys.stderr.flush()  # nothing of the worker's may surface in a program's output
            pid = os.fork()
            if pid == 0:
                try:
                    self._enter(kind, fds)
                finally:
                    os._exit(SETUP_FAILED_EXIT)
        return pid

    # ------------------------------------------------------------------ evaluator
    def _evaluator_main(self, sock_fd: int) -> None:
        conf = self.conf
        try:
            _linux.set_name(b"sandbox-eval")
            os.setsid()  # out of the programs' process groups
            os.chdir("/")
            if conf.pdeathsig:
                _linux.prctl(_linux.PR_SET_PDEATHSIG, 9)
            if not conf.inherited:
                conf.apply_early()
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (sock_fd, self.null_fd)]
            for dst, src in enumerate((high[1], high[1], high[1], high[0])):
                os.dup2(src, dst, inheritable=dst < 3)
            os.closerange(4, 1 << 16)
            conf.set_evaluator_limits(self.eval_memory_mb, 64)
            if not conf.inherited:
                conf.install_seccomp()
            # not dumpable: a same-uid program cannot open its /proc files (mem, fd, environ)
            _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
        except BaseException:
            os._exit(SETUP_FAILED_EXIT)
        _evaluator.main(3)

    def start_evaluator(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.eval_pid = self._spawn(b"E", [theirs.fileno()])
        finally:
            theirs.close()
        self.eval_sock = ours

    def stop_evaluator(self) -> None:
        if self.eval_sock is not None:
            self.eval_sock.close()
            self.eval_sock = None
        if self.eval_pid > 0:
            try:
                os.kill(self.eval_pid, signal.SIGKILL)
                os.waitpid(self.eval_pid, 0)
            except OSError:
                pass
            self.eval_pid = -1

    def _hand_to_evaluator(self, body: bytes, sp: Spare) -> int | None:
        """Give the evaluator its job and the program's channel; its socket's fd. An
        evaluator that retired or died shows as a failed send: a new one takes the job."""
        data = _LEN.pack(len(body)) + body
        for _ in range(2):
            if self.eval_sock is None:
                self.start_evaluator()
            try:
                sent = socket.send_fds(self.eval_sock, [data], [sp.req_w, sp.rep_r])
                if sent < len(data):
                    self.eval_sock.sendall(data[sent:])
                return self.eval_sock.fileno()
            except OSError:
                self.stop_evaluator()
        return None

    # ------------------------------------------------------------------ spares
    def make_spare(self, probe: bool = False) -> Spare:
        """Create the process for the next job ahead of time, off the critical path."""
        os.mkdir(self.scratch, 0o700)
        if self.conf.uid is not None:
            os.chown(self.scratch, self.conf.uid, self.conf.gid)
        self.last_scratch = True
        (out_r, out_w), (err_r, err_w), (sig_r, sig_w), (job_r, job_w), (req_r, req_w), \
            (rep_r, rep_w) = (os.pipe() for _ in range(6))
        child_fds = [sig_w, req_r, rep_w, job_r, out_w, err_w]  # `_harness.PLACED` order
        pid = self._spawn(b"P" if probe else b"J", child_fds)
        for fd in child_fds:
            os.close(fd)
        return Spare(pid, out_r, err_r, sig_r, job_w, req_w, rep_r)

    @staticmethod
    def release_evaluator_ends(sp: Spare) -> None:
        for fd in (sp.req_w, sp.rep_r):
            os.close(fd)

    def _discard(self, sp: Spare) -> None:
        """Forget a spare that died before running a job."""
        for fd in sp[1:]:
            try:
                os.close(fd)
            except OSError:
                pass
        remove_tree(self.scratch)
        self.last_scratch = False

    def after_job(self) -> None:
        """Between jobs, after the reply went out: reap the last program and sweep what it
        left, remove its scratch directory, create the next spare, and a new evaluator if the
        last one was stopped."""
        if self.to_reap is not None:
            try:
                os.waitpid(self.to_reap, 0)
            except ChildProcessError:
                pass
            self.to_reap = None
            self._sweep()
        if self.last_scratch:
            remove_tree(self.scratch)
            self.last_scratch = False
        if self.spare is None:
            self.spare = self.make_spare()
        if self.eval_sock is None:
            self.start_evaluator()

    # ------------------------------------------------------------------ one run
    def run(self, header_raw: bytes, program_part: bytes, evaluator_part: bytes
            ) -> dict[str, Any]:
        """One job. `header_raw` is JSON {"limits", "n_tests", "mode"}; the two parts go to
        the program's process and to the evaluator as they are."""
        header = json.loads(header_raw)
        limits = header["limits"]
        proxied = header["mode"] == "proxy"
        if self.cgroups is not None:
            # the worker, its zygote, the evaluator and the program live in the leaf too
            want = ((limits["memory_mb"] << 20) + _CGROUP_MEMORY_MARGIN,
                    limits["max_processes"] + 4)
            if want != self._cg_limits:
                self.cgroups.set_limits(*want)
                self._cg_limits = want
        nonce = os.urandom(_job.NONCE_BYTES)  # drawn for this run only
        job = (_job.encode_limits(limits) + (_job.PROXY if proxied else _job.IN_PROCESS + nonce)
               + program_part)
        sp = self.spare
        self.spare = None
        if sp is not None and os.waitpid(sp.pid, os.WNOHANG)[0]:  # died while waiting
            self._discard(sp)
            sp = None
        if sp is None:
            sp = self.make_spare()
        t0 = time.monotonic()
        # the evaluator first: it can send its expected calls while the program starts
        evaluator = self._hand_to_evaluator(nonce + evaluator_part, sp) if proxied else None
        self.release_evaluator_ends(sp)
        if proxied and evaluator is None:
            os.close(sp.job_w)
            killpg(sp.pid)
            os.waitpid(sp.pid, 0)
            for fd in (sp.out_r, sp.err_r, sp.sig_r):
                os.close(fd)
            return {"status": "sandbox_error", "detail": "the evaluator could not be started",
                    "wall_s": 0.0, "in_process": False}
        try:
            view = memoryview(job)
            while view:
                view = view[os.write(sp.job_w, view):]
        except BrokenPipeError:
            pass  # it died before taking its job: the run reports how (sandbox_error)
        os.close(sp.job_w)
        try:
            watched = watch(sp.pid, t0, limits, sp.out_r, sp.err_r, sp.sig_r, evaluator,
                            self._sweep)
        finally:
            wall = time.monotonic() - t0
            for fd in (sp.out_r, sp.err_r, sp.sig_r):
                os.close(fd)
        self.to_reap = watched["reap"]
        if watched["eval_dead"] is not None or watched["eval_retiring"]:
            self.stop_evaluator()  # a new one starts after the reply
        # the memory cgroup's OOM counter explains a death by signal; read only then
        oom = False
        if self.cgroups is not None and watched["wstatus"] is not None \
                and os.WIFSIGNALED(watched["wstatus"]):
            kills = self.cgroups.oom_kills()
            oom, self._oom_kills = kills > self._oom_kills, kills
        return verdict(watched, nonce, header["n_tests"], limits, wall, oom, proxied)

    # ------------------------------------------------------------------ cleanup
    def _children(self) -> list[int]:
        """Our children, the zygote and the evaluator excepted."""
        me = os.getpid()
        keep = (self.zygote_pid, self.eval_pid)
        try:
            fd = os.open(f"/proc/{me}/task/{me}/children", os.O_RDONLY | os.O_CLOEXEC)
            try:
                return [int(x) for x in os.read(fd, 1 << 16).split() if int(x) not in keep]
            finally:
                os.close(fd)
        except OSError:
            pass
        kids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                    if (int(stat[stat.rindex(")") + 2:].split()[1]) == me
                            and int(entry) not in keep):
                        kids.append(int(entry))
                except (OSError, ValueError, IndexError):
                    pass
        return kids

    def _sweep(self) -> bool:
        """Kill every process left under this worker. Orphans (e.g. a grandchild that called
        setsid() and outlived its parent) are re-parented to us because we are a subreaper,
        so each round kills our direct children and reaps them; their children arrive next."""
        for _ in range(100_000):
            kids = self._children()
            if not kids:
                return True
            for k in kids:
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass
            for k in kids:
                try:
                    os.waitpid(k, 0)
                except ChildProcessError:
                    pass
        return False

    def close(self) -> None:
        self._stop_zygote()
        if self.spare is not None:
            os.close(self.spare.job_w)  # EOF: the spare exits without running anything
            self.release_evaluator_ends(self.spare)
            for fd in (self.spare.out_r, self.spare.err_r, self.spare.sig_r):
                os.close(fd)
            try:
                os.waitpid(self.spare.pid, 0)
            except ChildProcessError:
                pass
            self.spare = None
        self.stop_evaluator()
        self._sweep()
        remove_tree(self.scratch)
        for fd in (self.conf.landlock_fd, self.conf.scope_fd):
            if fd is not None:
                os.close(fd)


class _FrameReader:
    """The pool's frames, read in large chunks (a job is three frames, often two jobs)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, bytearray()

    def next(self) -> bytes | None:
        while len(self.buf) < 4 or len(self.buf) < 4 + _LEN.unpack_from(self.buf)[0]:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        n = _LEN.unpack_from(self.buf)[0]
        body = bytes(self.buf[4:4 + n])
        del self.buf[:4 + n]
        return body


def _count_own_processes() -> int:
    uid = os.getuid()
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def main() -> None:
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when we stop
    _linux.set_name(b"sandbox-worker")
    try:
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        _linux.prctl(_linux.PR_SET_DUMPABLE, 0)  # /proc/<worker>/* unreadable to programs
    except OSError:
        pass
    cfg = read_msg(rfd)
    if cfg is None:
        return
    if cfg.get("cpu") is not None:
        try:
            os.sched_setaffinity(0, {cfg["cpu"]})
        except OSError:
            pass
    worker = Worker(cfg)
    checks = worker.start((rfd, wfd))
    write_msg(wfd, {"checks": checks, "pid": os.getpid()})
    worker.after_job()
    frames = _FrameReader(rfd)
    while True:
        header = frames.next()
        program_part = frames.next() if header is not None else None
        evaluator_part = frames.next() if program_part is not None else None
        if evaluator_part is None:
            break
        try:
            result = worker.run(header, program_part, evaluator_part)
        except OSError as e:
            if e.errno == errno.EPIPE:
                break
            result = {"status": "sandbox_error", "detail": f"worker: {e}", "wall_s": 0.0}
        write_msg(wfd, result)
        worker.after_job()
    worker.close()


if __name__ == "__main__":
    main()
