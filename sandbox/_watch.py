"""Watching one run: output capture with caps, the wall-clock limit, the verdict message and
the hard kill; then the verdict itself, decided from what the trusted side said.

In-process runs end when the program's process ends; its verdict is the pass signal on its
signal pipe. Proxied runs end when the evaluator's verdict arrives (or the evaluator dies);
the program's process is then killed, and its exit status only explains a run in which the
evaluator reports that the program ended mid-call.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import struct
import time
from collections.abc import Callable
from typing import Any

SETUP_FAILED_EXIT = 121
_SIGNAL_MAX = 65536
_GRACE_S = 0.5  # after a kill at the limit, how long the evaluator may take to answer
_LEN = struct.Struct(">I")
_SIGNAL_NAMES = {int(s): s.name for s in signal.Signals}


def killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def watch(pid: int, t0: float, limits: dict[str, Any], out_r: int, err_r: int, sig_r: int,
          evaluator: int | None = None,
          sweep: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Watch the program's process `pid` until its run ends. `evaluator`: the evaluator's
    socket in a proxied run."""
    cap, max_out = limits["capture_bytes"], limits["max_output_bytes"]
    bufs = {out_r: bytearray(), err_r: bytearray(), sig_r: bytearray()}
    total, truncated, override = 0, False, None
    wstatus: int | None = None
    ended = False  # the program's process ended on its own
    verdict: bytes | None = None
    eval_dead: str | None = None
    ebuf = bytearray()
    sent: dict[str, Any] = {}  # what the evaluator sent besides its verdict
    poller = select.poll()
    for fd in bufs:
        poller.register(fd, select.POLLIN)
    pidfd = _pidfd(pid)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    efd = None
    if evaluator is not None:  # its death shows as the end of its socket
        efd = evaluator
        poller.register(efd, select.POLLIN)
    deadline = t0 + limits["timeout_s"]
    open_fds = set(bufs)

    def read_eval() -> None:
        nonlocal verdict, eval_dead
        try:
            data = os.read(efd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            data, eval_dead = b"", f"its channel failed: {e}"
        if not data:
            eval_dead = eval_dead or "it closed its channel"
            return
        ebuf.extend(data)
        if len(ebuf) >= 4:
            n = _LEN.unpack_from(ebuf)[0]
            if len(ebuf) >= 4 + n:
                verdict = bytes(ebuf[4:4 + n])
                for key in ("stdout", "stderr"):  # the tests' own output, then the verdict
                    if len(verdict) >= 4 and 4 + _LEN.unpack_from(verdict)[0] <= len(verdict):
                        m = _LEN.unpack_from(verdict)[0]
                        sent[key] = verdict[4:4 + m]
                        verdict = verdict[4 + m:]
                if len(verdict) >= 4 and 5 + _LEN.unpack_from(verdict)[0] <= len(verdict):
                    v = _LEN.unpack_from(verdict)[0]
                    sent["retiring"] = bool(verdict[4 + v] & 4)
                    verdict = verdict[4:4 + v]

    def finished() -> bool:
        return ended if evaluator is None else (verdict is not None or eval_dead is not None)

    try:
        while not finished():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                override = "timeout"
                break
            wait_ms = remaining * 1000 if pidfd is not None else min(remaining * 1000, 20)
            for fd, _ev in poller.poll(wait_ms):
                if fd == efd:
                    read_eval()
                elif fd in open_fds:
                    data = os.read(fd, 65536)
                    if not data:
                        poller.unregister(fd)
                        open_fds.discard(fd)
                    elif fd == sig_r:
                        bufs[fd] += data[: max(0, _SIGNAL_MAX - len(bufs[fd]))]
                    else:
                        total += len(data)
                        room = cap - len(bufs[fd])
                        bufs[fd] += data[:max(0, room)]
                        truncated = truncated or len(data) > room
                        if total > max_out:
                            override = "output_limit"
                            break
            if override:
                break
            if not ended:
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    wstatus, ended = st, True
                    if pidfd is not None:
                        poller.unregister(pidfd)
                    if evaluator is not None:
                        # the program is over: what it left behind (a grandchild holding
                        # its end of the channel) must not keep the evaluator waiting
                        killpg(pid)
                        if sweep is not None:
                            sweep()
        if evaluator is not None:
            if override is not None:  # the program is stopped first; the evaluator may answer
                killpg(pid)
                _wait_for(lambda: verdict is not None or eval_dead is not None, read_eval,
                          efd, _GRACE_S)
                if verdict is None:
                    eval_dead = eval_dead or "it did not answer after the run was stopped"
            elif not ended and verdict is not None and b'"kind": "died"' in verdict[:64]:
                # the program's process ended mid-call: collect why, briefly
                if pidfd is not None:
                    select.select([pidfd], [], [], 1.0)
        reap = False
        if not ended:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                wstatus, ended = st, True
            elif evaluator is not None and verdict is not None and override is None:
                # The verdict is in and the program's output before its last reply is in
                # the pipes: stop it now, reap it and sweep after the result went out.
                killpg(pid)
                reap = True
            else:
                killpg(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                _, wstatus = os.waitpid(pid, 0)
        if not reap:
            killpg(pid)  # the rest of the group, before draining the pipes
            if sweep is not None:
                sweep()  # and everything else under the worker
        for fd in list(open_fds):  # what the pipes hold (every writer is dead, or was done)
            os.set_blocking(fd, False)
            for _ in range(64):
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not data:
                    break
                short = len(data) < 65536  # a pipe holds 64 KiB: the rest came in one read
                if fd == sig_r:
                    bufs[fd] += data[: max(0, _SIGNAL_MAX - len(bufs[fd]))]
                else:
                    room = cap - len(bufs[fd])
                    bufs[fd] += data[: max(0, room)]
                    truncated = truncated or len(data) > room
                if short:
                    break
    finally:
        if pidfd is not None:
            os.close(pidfd)
    # the program's output, then the tests' (from the evaluator), within the same cap
    stdout, stderr = bytes(bufs[out_r]), bytes(bufs[err_r])
    for key, got in (("stdout", stdout), ("stderr", stderr)):
        extra = sent.pop(key, b"")
        if extra:
            room = max(0, cap - len(got))
            truncated = truncated or len(extra) > room
            if key == "stdout":
                stdout += extra[:room]
            else:
                stderr += extra[:room]
    return {"wstatus": wstatus, "ended": ended, "override": override,
            "stdout": stdout, "stderr": stderr,
            "signal": bytes(bufs[sig_r]), "truncated": truncated, "verdict": verdict,
            "eval_dead": eval_dead, "reap": pid if reap else None,
            "eval_retiring": sent.pop("retiring", False)}


def _wait_for(cond: Callable[[], bool], step: Callable[[], None], fd: int, seconds: float
              ) -> None:
    end = time.monotonic() + seconds
    while not cond() and (left := end - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            step()


# ------------------------------------------------------------------------------ verdict
def verdict(w: dict[str, Any], nonce: bytes, n_tests: int, limits: dict[str, Any],
            wall: float, oom: bool, proxied: bool) -> dict[str, Any]:
    """The result record of one run (ExecResult fields, status as a string)."""
    code = os.waitstatus_to_exitcode(w["wstatus"]) if w["wstatus"] is not None else None
    res: dict[str, Any] = {
        # a proxied run's program is stopped by the worker; its exit code matters only
        # when it ended by itself mid-run (set below)
        "wall_s": round(wall, 6), "exit_code": None if proxied else code,
        "stdout": w["stdout"].decode("utf-8", "replace"),
        "stderr": w["stderr"].decode("utf-8", "replace"),
        "output_truncated": w["truncated"], "failed_test": None, "detail": "",
        "tests_run": 0, "in_process": not proxied, "calls": 0,
    }

    def done(status: str, detail: str = "", **kw: Any) -> dict[str, Any]:
        res.update(status=status, detail=detail, **kw)
        return res

    sig = w["signal"]
    if proxied:
        msg = w["verdict"] or b""
        good = b"P" + nonce + str(n_tests).encode() + b" "
        if msg.startswith(good) and w["override"] is None and msg[len(good):].isdigit():
            return done("passed", tests_run=n_tests, calls=int(msg[len(good):]))
    elif sig == b"P" + nonce + str(n_tests).encode() and code == 0:
        return done("passed", tests_run=n_tests)
    if w["override"] == "timeout":
        return done("timeout", f"wall-clock limit of {limits['timeout_s']} s reached")
    if w["override"] == "output_limit":
        return done("output_limit",
                    f"more than {limits['max_output_bytes']} bytes of stdout+stderr")
    if sig.startswith(b"S") and code == SETUP_FAILED_EXIT:
        return done("sandbox_error", "confinement failed: " + sig[1:].decode("utf-8", "replace"))
    if proxied:
        return _proxied(w, msg, code, limits, oom, done)
    return _in_process(w, sig, code, limits, oom, done)


def _failure(msg: bytes) -> tuple[str, int | None, str, int]:
    try:
        rec = json.loads(msg[1:])
        kind, test, detail = rec["kind"], rec["test"], str(rec["detail"])
        calls = int(rec.get("calls", 0))
    except (ValueError, KeyError, TypeError):
        return "error", None, "unreadable failure report", 0
    return kind, test if isinstance(test, int) else None, detail, calls


def _by_signal(code: int, limits: dict[str, Any], oom: bool, done: Callable[..., Any],
               **kw: Any) -> dict[str, Any]:
    signo = -code
    name = _SIGNAL_NAMES.get(signo, str(signo))
    if signo == signal.SIGXCPU:
        return done("timeout", f"CPU-time limit of {limits['cpu_limit_s']} s reached", **kw)
    if oom:
        return done("memory", f"killed by the memory cgroup ({name})", **kw)
    return done("killed", f"killed by {name}", **kw)


def _proxied(w: dict[str, Any], msg: bytes, code: int | None, limits: dict[str, Any],
             oom: bool, done: Callable[..., Any]) -> dict[str, Any]:
    if not msg.startswith(b"F"):
        why = w["eval_dead"] or "it sent an unrecognised verdict"
        return done("sandbox_error", f"the evaluator failed: {why}")
    kind, test, detail, calls = _failure(msg)
    kw = {"failed_test": test, "tests_run": test or 0, "calls": calls}
    if kind == "died":
        kw["exit_code"] = code
        if not w["ended"]:
            return done("error", "the program's process closed its channel to the evaluator "
                        f"({detail})", **kw)
        if code is not None and code < 0:
            return _by_signal(code, limits, oom, done, **kw)
        if code == SETUP_FAILED_EXIT:
            return done("sandbox_error", "confinement of the program's process failed", **kw)
        return done("exited", f"the program's process exited with code {code} before the "
                    f"tests finished ({detail})", **kw)
    if kind not in ("failed", "error", "syntax_error", "memory", "exited", "sandbox_error"):
        kind = "error"
    return done(kind, detail, **kw)


def _in_process(w: dict[str, Any], sig: bytes, code: int | None, limits: dict[str, Any],
                oom: bool, done: Callable[..., Any]) -> dict[str, Any]:
    if sig.startswith(b"F"):
        kind, test, detail, _ = _failure(sig)
        if kind not in ("failed", "error", "syntax_error", "memory", "exited"):
            kind = "error"
        return done(kind, detail, failed_test=test, tests_run=test or 0)
    if code is not None and code < 0:
        return _by_signal(code, limits, oom, done)
    if sig:
        return done("error", "the harness channel carried an unrecognised message "
                             "(the program wrote to it)")
    return done("exited", f"the process exited with code {code} before the tests finished")


def remove_tree(path: str) -> None:
    try:  # the common case: the program left its directory empty
        os.rmdir(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass

    def fix(func: Any, p: str, exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    try:
        shutil.rmtree(path, onerror=fix)
    except (OSError, RecursionError):
        pass
    if os.path.lexists(path):  # very deep trees defeat shutil; rm(1) copes
        try:
            pid = os.posix_spawnp("rm", ["rm", "-rf", "--", path], dict(os.environ))
            os.waitpid(pid, 0)
        except OSError:
            pass
