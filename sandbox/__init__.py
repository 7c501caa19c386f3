"""Run untrusted Python programs against tests, isolated, in a pool. Standard library only.

    from sandbox import Pool, Suite, run
    r = run("def f(x):\n    return x + 1", ["assert f(1) == 2"])
    r.status, r.passed            # Status.PASSED, True
    with Pool(workers=4) as pool:
        results = pool.map(programs, suites)   # Suite, or a list of test strings

Trust boundary
==============
The program runs in its own confined process; the tests run in a separate, trusted
evaluator process (confined too), which alone decides the verdict. Names a test uses resolve
in the test's own namespace; only the entry points come from the program, as proxies through
which every call crosses the process boundary as plain data (None, bool, int, float,
complex, str, bytes, and lists/tuples/dicts/sets of them), rebuilt as fresh builtins; any
other object crosses as an opaque reference that can only be passed back or called. Nothing
the program does to its builtins, modules, frames, tracing or garbage collector reaches the
tests or the verdict. A declared fallback (`Suite(in_process=True)`) runs the tests in the
program's process, as classic harnesses do, for tests that need the program's own objects;
such runs are marked (`ExecResult.in_process`) because the program can game them.

Threat model
============
What we defend against: model-generated code that is buggy, greedy (loops, memory, output,
processes, disk) or opportunistic (reward hacking: rigged equality, shadowed builtins,
patched modules, introspection of the harness, trace hooks, forged pass signals, exiting
early with status 0; reaching the network or the host's files; killing the evaluator).
What we do not defend against: a deliberate attacker with a kernel exploit, side channels,
and anything at the lowest level with a root caller (the program then runs as root).

Always (level `rlimits`): RLIMIT_AS/DATA (memory), CPU, FSIZE, NOFILE, NPROC, CORE; a new
session and process group; a fresh scratch directory as cwd, HOME and TMPDIR; a minimal
environment (the caller's environment is never passed down); a hard wall-clock kill of the
process group, plus a sweep of everything left under the worker (it is a child subreaper,
so even a grandchild that called setsid() is found and killed); output capped. The worker
and the evaluator are non-dumpable, so same-uid programs cannot open their /proc files.
NOT contained at this level: network access; reading and writing anything the caller's uid
can; signalling the caller's processes; reading the caller's environment from
/proc/<pid>/environ; filling the disk with many files (RLIMIT_FSIZE bounds one file); and,
as root, fork bombs, since RLIMIT_NPROC does not bind root. A loud warning is printed.

`seccomp` adds: a root caller's programs run as an unused per-worker uid (root's processes
become out of reach, and RLIMIT_NPROC binds; if the Python installation is readable only by
root, the programs keep CAP_DAC_READ_SEARCH, i.e. can read any file until Landlock is in
force); and a seccomp-bpf filter returning EPERM for socket() (every family; socketpair
stays), ptrace, process_vm_*, mount and the new mount API, unshare/setns/namespace clone
flags, setpgid, io_uring, bpf, perf, keyrings, module loading, reboot, clock setting, pidfd
signalling, kill/tkill/tgkill aimed at the worker, its zygote, their parent, pid 1 or
everyone (-1), and setsid() and setting rlimits (these two stay allowed for a process
created by the zygote, which needs them itself; see docs/sandbox.md). NOT contained:
reading and writing the files the program's uid can reach (for a non-root caller: the
caller's home directory).

`landlock` adds: writes only inside the scratch directory; reads and execution only under
the Python installation and system library/binary directories (not /etc, /home, /proc, the
repository); no TCP bind/connect (ABI >= 4); signals and abstract UNIX sockets confined to
the program's own processes (ABI >= 6), in a domain nested below the evaluator's, so a
program cannot signal or trace it. Landlock also forbids ptrace-style access to processes
outside the domain, which covers /proc/<pid>/environ and /proc/<pid>/mem. NOT contained:
many files filling the disk under scratch.

`namespaces` (bubblewrap) adds: no network at all (own network namespace), own PID
namespace (host processes are invisible), own IPC and UTS namespaces, a read-only view of
the root filesystem, and a private size-limited /tmp holding the scratch directories (so
filling "the disk" fills a small tmpfs). An interpreter, virtual environment or this package
living under /tmp is bound back read-only at its own path.

Where cgroups are writable (v2 pids+memory, or the v1 pids and memory hierarchies), each
worker's programs also share a pids and a memory limit.

See docs/sandbox.md for the threat and hostile-program corpora and which cases each level
contains.
"""

from sandbox._names import entry_points_of
from sandbox.pool import IsolationReport, Pool, detect, require_isolation, run
from sandbox.result import (
    Check,
    ExecResult,
    Isolation,
    IsolationError,
    Limits,
    Status,
    Suite,
)

__all__ = [
    "Check",
    "ExecResult",
    "Isolation",
    "IsolationError",
    "IsolationReport",
    "Limits",
    "Pool",
    "Status",
    "Suite",
    "detect",
    "entry_points_of",
    "require_isolation",
    "run",
]
