"""Math answer verification: a fast pure-Python path, and Math-Verify as a symbolic fallback.

Extraction is a chain of small named steps, named after lm-evaluation-harness's GSM8K filters:

- `extract_strict`: the first `#### n` (lm-eval "strict-match": regex `#### (\\-?[0-9\\.\\,]+)`;
  here the sign may also be U+2212 and the run must hold a digit).
- `extract_boxed`: the content of the last `\\boxed{...}` (nested braces).
- `extract_answer_line`: the last "The answer is ..." / "Answer: ..." statement.
- `extract_flexible`: the last number in the text (lm-eval "flexible-extract").

`verify(mode="strict")` uses only the first step; `mode="flexible"` tries them in the order
above and the first step that extracts anything decides. Extracted text and the gold answer are
compared as exact rationals (`fractions.Fraction`) after normalisation ($, %, thousands commas,
U+2212, trailing period or units, `3/4`, `\\frac{3}{4}`). What the fast path cannot read as a
number (e.g. `\\boxed{\\frac{\\pi}{2}}`) goes, with `fallback=True`, to Math-Verify in a worker
process whose wall-clock time the parent enforces: Math-Verify's own timeouts use SIGALRM, which
works only in the main thread and cancels any outer alarm, and a big-integer power in C cannot be
interrupted by a signal handler at all; killing the process always works.

This module imports neither torch nor math_verify; the workers import math_verify.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from gbmpo.tasks.base import Score

VERSION = "1"  # bump when extraction or comparison changes; tasks fold it into their version
MODES = ("strict", "flexible")

# --------------------------------------------------------------------------------------------
# Extraction steps
# --------------------------------------------------------------------------------------------

_MINUS = "\\-\u2212"  # for use inside [...]: escaped, so it never forms a range
_STRICT_RE = re.compile(r"#### ([" + _MINUS + r"]?[0-9.,]*[0-9][0-9.,]*)")

_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_DEC = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
_TEX_FRAC = (
    r"\\[dt]?frac[ \t]*(?:\{[ \t]*[" + _MINUS + r"]?[ \t]*\d+[ \t]*\}[ \t]*\{[ \t]*\d+[ \t]*\}"
    r"|\d\d)"
)
# A number as it appears in running text: optional sign and currency, a LaTeX or slash fraction,
# or a (comma-grouped) decimal. It may not start inside a word or another number. The leading
# lookahead lets the regex engine skip most positions quickly.
_NUMBER_RE = re.compile(
    r"(?=[\d$\\.+" + _MINUS + r"])(?<![\w.\\])"
    r"[" + _MINUS + r"+]?(?:\\?\$[ \t]?)?[" + _MINUS + r"]?"
    rf"(?:{_TEX_FRAC}|{_DEC}(?:[ \t]*/[ \t]*{_INT}(?!\.?\d))?)"
)
_DIGIT_RE = re.compile(r"\d")
_NUMBER_BREAK_RE = re.compile(r"[^\d,.$\\/ \t{}dtfrac+" + _MINUS + "]")  # never inside a number
_ANSWER_LINE_RE = re.compile(
    r"\banswer\s*(?:is|:|=)\s*[:*]*[ \t]*(?=([^\n]*))", re.IGNORECASE
)
# `$$x$$`, `\(x\)`, `\[x\]`, `$x$` at the start of an answer (`\$` inside does not close).
_LEADING_MATH_RE = re.compile(
    r"\$\$(.+?)\$\$|\\\((.+?)\\\)|\\\[(.+?)\\\]|\$((?:\\.|[^$\\])+)\$"
)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)")
_MATH_DELIMS = (("$$", "$$"), ("\\(", "\\)"), ("\\[", "\\]"), ("$", "$"))


def extract_strict(text: str) -> str | None:
    """The number after the first `#### ` (lm-eval strict-match), or None."""
    m = _STRICT_RE.search(text)
    return m.group(1) if m else None


def extract_flexible(text: str) -> str | None:
    """The last number in the text (lm-eval flexible-extract), or None."""
    # Equivalent to taking the last of _NUMBER_RE.finditer(text), but only scans the tail: a
    # match never contains a character outside _NUMBER_CHARS, so a scan that starts right after
    # such a character finds the same matches as one from the start of the text. Working on the
    # reversed text finds the last digit and the break before it in C.
    n, rev, pos = len(text), text[::-1], 0
    while True:
        digit = _DIGIT_RE.search(rev, pos)
        if digit is None:
            return None
        brk = _NUMBER_BREAK_RE.search(rev, digit.end())
        start = n - brk.start() if brk else 0
        after = _NUMBER_BREAK_RE.search(text, n - digit.start(), n - pos)  # keep it: lookaheads
        end = after.end() if after else n - pos
        last = deque(_NUMBER_RE.finditer(text, start, end), maxlen=1)
        if last:
            return last[0].group(0).strip()
        if brk is None:
            return None
        pos = brk.start() + 1


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced, or None."""
    start = -1
    for m in _BOXED_RE.finditer(text):
        start = m.end()
    if start < 0:
        return None
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":  # `\boxed 5`
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0) if m else None
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None  # unbalanced: the completion was cut off


def extract_answer_line(text: str) -> str | None:
    """What follows the last "The answer is" / "Answer:" / "Final answer:", or None.

    Returns the content of a leading `$...$` if there is one, else the leading number, else the
    rest of the sentence (for the symbolic fallback). Requires something answer-like to follow,
    so "the answer is below" does not count.
    """
    if "nswer" not in text and "NSWER" not in text:
        return None
    last = deque(_ANSWER_LINE_RE.finditer(text), maxlen=1)
    if not last:
        return None
    rest = last[0].group(1).strip().strip("*").strip()
    if not rest:
        return None
    if _BOXED_RE.match(rest):  # "The answer is \boxed{...}" (only reached when cut off)
        return extract_boxed(rest)
    m = _LEADING_MATH_RE.match(rest)
    if m:
        return next(g for g in m.groups() if g is not None).strip()
    m = _NUMBER_RE.match(rest)
    if m:
        return m.group(0).strip()
    if rest[0] not in "\\({[" and not rest[0].isdigit():
        return None
    return re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0].strip()


# --------------------------------------------------------------------------------------------
# Number normalisation
# --------------------------------------------------------------------------------------------

_FULL_NUMBER_RE = re.compile(
    r"(?P<sign>[-+]?)\s*(?:(?P<frac>\\[dt]?frac\s*(?:\{(?P<fn>-?\d+)\}\{(?P<fd>\d+)\}"
    r"|(?P<fn1>\d)(?P<fd1>\d)))|(?P<num>\d+(?:\.\d*)?|\.\d+)(?:/(?P<den>\d+))?)"
)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT_RE = re.compile(r"[^\W\d_][^\d]*")  # a trailing word or words: "dollars", "cm^2", "per h"


def _clean(s: str) -> str:
    s = s.strip()
    for open_, close in _MATH_DELIMS:
        if s.startswith(open_) and s.endswith(close) and len(s) >= len(open_) + len(close):
            s = s[len(open_) : len(s) - len(close)].strip()
            break
    while s.startswith("{") and s.endswith("}"):  # \boxed{{18}}
        s = s[1:-1].strip()
    s = s.replace("\u2212", "-").replace("{,}", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    if "\\" in s:
        s = _TEXT_CMD_RE.sub(r" \1", s)
    return s.strip()


def parse_number(text: str) -> Fraction | None:
    """`text` as an exact rational, or None if it is not a plain number.

    Accepts "$1,234.50", "−3" (U+2212), "+7", "72.0", "50%", "18.", "3/4", "\\frac{3}{4}",
    "\\dfrac34", "-\\frac{1}{2}", "x = 5", "18 dollars", "12\\text{ cm}". Commas count as
    thousands separators only in groups of three.
    """
    s = _clean(text)
    m = re.match(r"[a-zA-Z]\w*\s*=\s*", s)  # "x = 5"
    if m and m.end() < len(s):
        s = s[m.end() :]
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = s.replace(" ", "") if re.fullmatch(r"[-+]?\s*[\d.]+\s*/\s*\d+\s*", s) else s
    m = _FULL_NUMBER_RE.match(s)
    if not m:
        return None
    tail = s[m.end() :].strip().rstrip(".").strip()
    if tail and not _UNIT_RE.fullmatch(tail):
        return None
    try:
        if m.group("frac"):
            num = m.group("fn") or m.group("fn1")
            den = m.group("fd") or m.group("fd1")
            value = Fraction(int(num), int(den))
        else:
            value = Fraction(m.group("num").rstrip(".") or "0")
            if m.group("den"):
                value /= int(m.group("den"))
    except (ValueError, ZeroDivisionError):  # 0 denominator; > 4300 digits (int limit)
        return None
    return -value if m.group("sign") == "-" else value


# Gold answers repeat (every sample of a prompt group, every epoch): cache them. Completions are
# not cached: they are unbounded model output.
_parse_gold = lru_cache(maxsize=8192)(parse_number)


def _same_text(a: str, b: str) -> bool:
    return re.sub(r"\s+", "", _clean(a)) == re.sub(r"\s+", "", _clean(b))


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathVerdict:
    """`method` names the step that decided: "strict", "boxed", "answer_line", "flexible",
    "math_verify", "none" (nothing extracted), "timeout" (fallback killed), "error"."""

    correct: bool
    extracted: str | None
    method: str


_STEPS = {
    "strict": (("strict", extract_strict),),
    "flexible": (
        ("strict", extract_strict),
        ("boxed", extract_boxed),
        ("answer_line", extract_answer_line),
        ("flexible", extract_flexible),
    ),
}


def verify(
    completion: str,
    answer: str,
    *,
    mode: str = "flexible",
    fallback: bool = False,
    timeout: float = 5.0,
) -> MathVerdict:
    """Is `completion`'s final answer equal to the gold `answer`? Never raises on model output.

    mode: "strict" (only the `#### n` line) or "flexible" (strict, boxed, answer line, last
    number; the first step that extracts something decides). fallback: send what the fast path
    cannot read as a number to Math-Verify in a worker process, killed after `timeout` seconds
    (verdict: wrong, method "timeout").
    """
    try:
        steps = _STEPS[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}") from None
    try:
        return _decide(completion, answer, steps, fallback, timeout)
    except Exception:  # model output must never crash a training step
        return MathVerdict(False, None, "error")


def _decide(completion, answer, steps, fallback, timeout) -> MathVerdict:
    for method, extract in steps:
        raw = extract(completion)
        if raw is None:
            continue
        if raw == answer:  # the common case, no parsing needed
            return MathVerdict(True, raw, method)
        got, gold = parse_number(raw), _parse_gold(answer)
        if got is not None and gold is not None:
            return MathVerdict(got == gold, raw, method)
        if _same_text(raw, answer):
            return MathVerdict(True, raw, method)
        if fallback:
            return default_pool().check(answer, raw, timeout=timeout)
        return MathVerdict(False, raw, method)
    return MathVerdict(False, None, "none")


def score_math(
    completion: str, answer: str, *, fallback: bool = False, timeout: float = 5.0
) -> Score:
    """Task-facing score: reward is the flexible verdict; details carry strict and flexible."""
    strict = verify(completion, answer, mode="strict", fallback=fallback, timeout=timeout)
    if strict.method == "strict":  # flexible tries strict first, so it would decide the same
        flexible = strict
    else:
        flexible = verify(completion, answer, mode="flexible", fallback=fallback, timeout=timeout)
    return Score(
        reward=float(flexible.correct),
        correct=flexible.correct,
        extracted=flexible.extracted,
        method=flexible.method,
        details={"strict": float(strict.correct), "flexible": float(flexible.correct)},
    )


# --------------------------------------------------------------------------------------------
# Math-Verify worker pool
# --------------------------------------------------------------------------------------------

_WORKER_SCRIPT = Path(__file__).with_name("_mathverify_worker.py")
# Run the script without putting its folder on sys.path: this file would shadow stdlib `math`.
_BOOTSTRAP = "import runpy, sys; del sys.path[0]; sys.argv[:] = sys.argv[1:]; " \
    "runpy.run_path(sys.argv[0], run_name='__main__')"


# A check is one short single-threaded computation (SymPy, mpmath). Anything in the worker that
# would start a BLAS or OpenMP pool (NumPy, if SymPy pulls it in) is kept to one thread, so a
# pool of workers never holds more threads than workers.
_SINGLE_THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                       "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}


def _worker_env() -> dict[str, str]:
    return {**os.environ, **_SINGLE_THREAD_ENV}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which the workers inherit), not
    the machine's count: under taskset, a cgroup cpuset or a scheduler's CPU allocation they
    differ."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class _Worker:
    """One worker process speaking JSON lines over its stdin/stdout.

    Started with `subprocess` (a fresh interpreter, like the "spawn" start method) rather than
    `multiprocessing`, so a pool also works inside daemonic processes (e.g. a DataLoader or
    multiprocessing.Pool worker), which multiprocessing forbids from having children.
    """

    def __init__(self, memory_mb: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _BOOTSTRAP, str(_WORKER_SCRIPT), str(memory_mb)],
            env=_worker_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            start_new_session=True,  # Ctrl-C goes to the parent, which then closes the pool
        )
        self._buf = b""
        self.ready = False

    def read_line(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise EOFError("math-verify worker exited")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, timeout: float) -> None:
        if not self.ready:
            msg = self.read_line(time.monotonic() + timeout)
            if not msg.get("ready"):
                raise RuntimeError(f"math-verify worker failed to start: {msg.get('error')}")
            self.ready = True

    def send(self, payload: dict) -> None:
        self.proc.stdin.write(json.dumps(payload).encode() + b"\n")

    def signal_kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass

    def kill(self) -> None:
        """SIGKILL, close the pipes, reap."""
        self.signal_kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class MathVerifyPool:
    """Math-Verify in up to `workers` processes, with a wall-clock timeout per check.

    Thread-safe; a worker that overruns its timeout (or dies) is killed and replaced, and the
    pool keeps serving. Workers start on demand; the time a fresh worker spends importing
    Math-Verify (up to `startup_timeout`) does not count against a check's timeout.
    A pool belongs to the process that created it: use `default_pool()` across fork.
    """

    def __init__(
        self, workers: int = 2, *, startup_timeout: float = 120.0, memory_mb: int = 4096
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.memory_mb = memory_mb
        self.kills = 0  # workers killed for overrunning or dying; for monitoring and tests
        self._idle: list[_Worker] = []
        self._live = 0
        self._cond = threading.Condition()
        self._closed = False
        self._pid = os.getpid()

    def check(self, gold: str, pred: str, *, timeout: float = 5.0) -> MathVerdict:
        """Math-Verify's verdict on `pred` (an extracted answer, LaTeX or plain) against `gold`.
        Never raises: failures are verdicts with method "timeout" or "error"."""
        if os.getpid() != self._pid:
            return MathVerdict(False, pred, "error")  # inherited across fork: not ours to use
        try:
            worker = self._acquire()
        except Exception:  # no worker process: a verdict, not a crash
            return MathVerdict(False, pred, "error")
        healthy = False
        try:
            try:
                worker.wait_ready(self.startup_timeout)
            except Exception:  # startup failure: a verdict, not a crash
                return MathVerdict(False, pred, "error")
            worker.send({"gold": gold, "pred": pred, "cpu_budget": 10 * timeout + 30})
            reply = worker.read_line(time.monotonic() + timeout)
            healthy = True
            if "error" in reply:
                return MathVerdict(False, pred, "error")
            return MathVerdict(bool(reply["correct"]), pred, "math_verify")
        except TimeoutError:
            return MathVerdict(False, pred, "timeout")
        except Exception:  # the worker died or spoke garbage
            return MathVerdict(False, pred, "error")
        finally:
            self._release(worker, healthy)

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("MathVerifyPool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._live < self.workers:
                    self._live += 1
                    break
                self._cond.wait()
        try:
            return _Worker(self.memory_mb)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if healthy:
            with self._cond:
                if not self._closed:
                    self._idle.append(worker)
                    self._cond.notify()
                    return
        else:
            worker.signal_kill()  # at once: the verdict is returned right at the deadline
            with self._cond:
                self.kills += 1
        # Reaping and starting a replacement take a while: do it off the caller's clock.
        threading.Thread(target=self._replace, args=(worker,), daemon=True).start()

    def _replace(self, dead: _Worker) -> None:
        dead.kill()
        replacement = None
        with self._cond:
            closed = self._closed
        if not closed:
            try:  # start the replacement now so that it is warm by the next check
                replacement = _Worker(self.memory_mb)
            except Exception:  # retried on demand by the next _acquire
                replacement = None
        with self._cond:
            if replacement is not None and not self._closed:
                self._idle.append(replacement)
            else:
                self._live -= 1
                if replacement is not None:
                    replacement.kill()
            self._cond.notify()

    def close(self) -> None:
        """Kill idle workers; busy ones are killed when their check returns. Idempotent."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        if os.getpid() == self._pid:
            for worker in idle:
                worker.kill()

    def __enter__(self) -> MathVerifyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: MathVerifyPool | None = None
_default_lock = threading.Lock()


def default_pool() -> MathVerifyPool:
    """The process-wide pool used by `verify(fallback=True)`; recreated after fork."""
    global _default
    with _default_lock:
        if _default is None or _default._pid != os.getpid():
            # half the usable cores (the caller's own work needs the rest), at most 4: the
            # fallback only sees what the fast path cannot read as a number
            _default = MathVerifyPool(workers=max(1, min(4, usable_cores() // 2)))
        return _default


def _reset_after_fork() -> None:
    global _default, _default_lock
    _default_lock = threading.Lock()  # the parent may have held it while forking
    _default = None  # the parent's workers are not ours; leave them to the parent


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _close_default_pool() -> None:
    if _default is not None and _default._pid == os.getpid():
        _default.close()
