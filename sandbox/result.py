"""Public value types: limits, verdicts, isolation levels and checks."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any


class Status(str, enum.Enum):
    """How a run ended. Only `PASSED` is a pass, and only with the harness's signal."""

    PASSED = "passed"  # every test ran and the harness's signal arrived
    FAILED = "failed"  # a test raised AssertionError
    ERROR = "error"  # the program or a test raised another exception
    SYNTAX_ERROR = "syntax_error"  # the program does not compile
    TIMEOUT = "timeout"  # wall-clock or CPU limit reached
    MEMORY = "memory"  # MemoryError, or the memory cgroup killed it
    OUTPUT_LIMIT = "output_limit"  # more stdout+stderr than `Limits.max_output_bytes`
    EXITED = "exited"  # the process ended before the harness finished (sys.exit, os._exit)
    KILLED = "killed"  # died from a signal the sandbox did not send
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed; not the program's fault


class Isolation(enum.IntEnum):
    """Isolation levels, ordered: each level contains everything below it.

    RLIMITS:    resource limits, own session and process group, fresh scratch directory,
                minimal environment, hard kill of the whole process tree (subreaper sweep).
    SECCOMP:    + no privileges (a root caller drops to a per-worker uid) + a seccomp-bpf
                filter (no sockets, ptrace, mount, namespaces, setsid, io_uring, ...).
    LANDLOCK:   + Landlock: writes only inside scratch, reads only from the Python
                installation and system libraries, no TCP, signals and abstract sockets
                scoped to the program's own processes (kernel ABI permitting).
    NAMESPACES: + bubblewrap: network, PID, IPC and UTS namespaces, read-only root,
                private size-limited /tmp.
    """

    RLIMITS = 1
    SECCOMP = 2
    LANDLOCK = 3
    NAMESPACES = 4

    @classmethod
    def parse(cls, value: Isolation | str | int) -> Isolation:
        if isinstance(value, Isolation):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            valid = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown isolation level {value!r}; valid levels: {valid}") from None


# The features each level needs, in order. A level is in force when all of its features and
# those of every lower level passed their start-up check.
LEVEL_FEATURES: dict[Isolation, tuple[str, ...]] = {
    Isolation.RLIMITS: ("rlimits", "session", "scratch", "subreaper"),
    Isolation.SECCOMP: ("unprivileged", "seccomp"),
    Isolation.LANDLOCK: ("landlock",),
    Isolation.NAMESPACES: ("namespaces",),
}


@dataclass(frozen=True)
class Check:
    """One start-up check: a feature tried for real, with what happened."""

    name: str
    ok: bool
    detail: str = ""


def level_from_checks(checks: dict[str, Check]) -> Isolation:
    """Highest level whose features (and all lower levels' features) passed."""
    level = None
    for lvl in Isolation:
        if all(checks.get(f, Check(f, False)).ok for f in LEVEL_FEATURES[lvl]):
            level = lvl
        else:
            break
    if level is None:
        bad = [c.name for c in checks.values() if not c.ok]
        raise IsolationError(f"the sandbox cannot even set resource limits here (failed: {bad})")
    return level


class IsolationError(RuntimeError):
    """The isolation in force is below what was required, or cannot be set up."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits. Defaults suit MBPP/HumanEval-sized programs."""

    timeout_s: float = 10.0
    """wall-clock limit for program plus tests; the whole process tree is killed after it"""
    cpu_s: float | None = None
    """CPU-time limit (RLIMIT_CPU); None = timeout_s + 1"""
    memory_mb: int = 1024
    """address-space limit per process (RLIMIT_AS) and memory cgroup limit where available"""
    max_processes: int = 32
    """processes the program may have at once (RLIMIT_NPROC per uid; pids cgroup)"""
    file_size_mb: int = 16
    """largest file the program may write (RLIMIT_FSIZE)"""
    scratch_mb: int = 64
    """size of the private /tmp holding scratch (namespaces level; the pool's value, at start)"""
    open_files: int = 64
    """RLIMIT_NOFILE"""
    max_message_mb: int = 64
    """largest message between a program and the evaluator: one call's arguments or result"""
    max_output_bytes: int = 1 << 20
    """stdout + stderr beyond this kills the run (status output_limit)"""
    capture_bytes: int = 4096
    """bytes of stdout and of stderr kept in the result"""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and v <= 0:
                raise ValueError(f"Limits.{f.name} must be positive, got {v!r}")

    @property
    def cpu_limit_s(self) -> int:
        import math

        return int(math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Suite:
    """A program's tests, and what they take from the program.

    The tests run in the trusted evaluator, in a namespace of their own; each name in
    `entry_points` is bound to the program's object of that name, through which every call
    crosses the process boundary as plain data. `setup` runs in the evaluator before the
    tests (trusted code the tests rely on, e.g. HumanEval's prompt with its helpers);
    `program_setup` runs in the program's process after the program (code that must build
    inputs from the program's own classes, e.g. MBPP's test_setup_code; the names it binds
    that the tests use are entry points like any other). `in_process=True` is the declared
    fallback: setup, program, program setup and tests share one process and namespace, as
    in a classic harness, for tests that need the program's objects themselves; such runs
    are counted (`ExecResult.in_process`) because the program can then game its verdict.
    """

    tests: tuple[str, ...]
    entry_points: tuple[str, ...] | None = None
    """names the tests take from the program; None: every name the tests (and `setup`) read
    but do not bind and that is not a builtin"""
    setup: str = ""
    program_setup: str = ""
    in_process: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.tests, str):
            raise TypeError("tests must be a sequence of test strings, not one string")
        object.__setattr__(self, "tests", tuple(self.tests))
        if self.entry_points is not None:
            if isinstance(self.entry_points, str):
                raise TypeError("entry_points must be a sequence of names, not one string")
            bad = [n for n in self.entry_points if not str(n).isidentifier()]
            if bad:
                raise ValueError(f"entry_points must be Python identifiers; got {bad}")
            object.__setattr__(self, "entry_points", tuple(self.entry_points))

    @classmethod
    def of(cls, tests: Suite | Sequence[str]) -> Suite:
        if isinstance(tests, Suite):
            return tests
        if isinstance(tests, str):
            raise TypeError("tests must be a sequence of test strings, not one string")
        return cls(tuple(tests))


@dataclass(frozen=True)
class ExecResult:
    """The verdict on one program. `passed` is True only for `Status.PASSED`."""

    status: Status
    passed: bool
    wall_s: float
    isolation: str  # name of the level in force, e.g. "namespaces"
    failed_checks: tuple[str, ...] = ()  # start-up checks that failed (features not in force)
    failed_test: int | None = None  # index into `tests` of the first failing test
    detail: str = ""  # e.g. "AssertionError: ..." or "killed by SIGSEGV"
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    exit_code: int | None = None  # exit status, or -signal number
    tests_run: int = 0  # tests that completed without raising
    in_process: bool = False  # the declared fallback ran: tests in the program's process
    calls: int = 0  # calls the tests made into the program (proxied runs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        d["failed_checks"] = list(self.failed_checks)
        return d
