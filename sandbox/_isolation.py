"""What a pool reports about its isolation: the level reached, every start-up check, what a
missing feature needs, and the warning printed when only the lowest level is in force. Runs in
the caller's process only."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from sandbox.result import LEVEL_FEATURES, Check, Isolation, IsolationError

# What each start-up check needs (shown when a required level is out of reach).
HOW_TO_GET = {
    "rlimits": "setrlimit must work (it always does on Linux, unless the hard limits are "
               "already below the requested ones: raise them with `ulimit -H`)",
    "session": "setsid() must work (a normal process can always call it)",
    "scratch": "a writable temporary directory (check TMPDIR and free space)",
    "subreaper": "Linux >= 3.4 (prctl PR_SET_CHILD_SUBREAPER)",
    "unprivileged": "as root: CAP_SETUID and CAP_SETGID, to give programs an unused uid "
                    "(or run as a normal user)",
    "seccomp": "an x86_64 or aarch64 kernel with seccomp filters (CONFIG_SECCOMP_FILTER); "
               "inside a container, its seccomp profile must allow prctl(PR_SET_SECCOMP)",
    "landlock": "Linux >= 5.13 with Landlock among the active security modules (see "
                "/sys/kernel/security/lsm; add it with the lsm= boot parameter); a container "
                "runtime's seccomp profile must allow the landlock_* system calls",
    "namespaces": "bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf "
                  "install bubblewrap); inside a container it also needs user namespaces "
                  "(or CAP_SYS_ADMIN)",
}


@dataclass(frozen=True)
class IsolationReport:
    level: Isolation
    checks: dict[str, Check]

    def failed(self) -> list[Check]:
        return [c for c in self.checks.values() if not c.ok]

    def missing(self, level: Isolation | str) -> list[str]:
        """For each feature that `level` needs and that failed here: what happened and how
        to get it."""
        lvl = Isolation.parse(level)
        out = []
        for need in Isolation:
            if need > lvl:
                break
            for name in LEVEL_FEATURES[need]:
                c = self.checks.get(name, Check(name, False, "not checked"))
                if not c.ok:
                    out.append(f"{name} ({need.name.lower()} level): {c.detail}; "
                               f"to get it: {HOW_TO_GET[name]}")
        return out

    def require(self, level: Isolation | str, what: str = "") -> None:
        """Raise IsolationError, naming every missing feature and how to get it, when the
        level here is below `level`. `what` says who requires it (for the message)."""
        lvl = Isolation.parse(level)
        if self.level >= lvl:
            return
        lines = "\n  ".join(self.missing(lvl))
        raise IsolationError(
            f"{what or 'the caller'} requires sandbox isolation {lvl.name.lower()}, but here it "
            f"is {self.level.name.lower()}. Missing:\n  {lines}\n"
            "Run `python -m sandbox isolation` to see every check.")


    def format(self) -> str:
        lines = [f"isolation level: {self.level.name.lower()} ({int(self.level)} of "
                 f"{len(Isolation)})"]
        for lvl in Isolation:
            lines.append(f"  [{lvl.name.lower()}]")
            for name in LEVEL_FEATURES[lvl]:
                c = self.checks.get(name, Check(name, False, "not checked"))
                lines.append(f"    {'ok  ' if c.ok else 'FAIL'} {name:<13} {c.detail}")
        extra = [c for n, c in self.checks.items()
                 if not any(n in f for f in LEVEL_FEATURES.values())]
        if extra:
            lines.append("  [extra]")
            for c in extra:
                lines.append(f"    {'ok  ' if c.ok else 'FAIL'} {c.name:<13} {c.detail}")
        return "\n".join(lines)


_warned = False


def warn_lowest(checks: dict[str, Check]) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    failed = [f"{c.name} ({c.detail})" for c in checks.values() if not c.ok]
    bar = "!" * 78
    sys.stderr.write(
        f"\n{bar}\n!! sandbox: untrusted code runs at the LOWEST isolation level (rlimits).\n"
        "!! Programs can reach the network, read and write your files, and signal your\n"
        "!! processes. Verdicts are not trustworthy against deliberate attacks.\n"
        f"!! Not in force: {'; '.join(failed) or '-'}\n"
        "!! Use --require-isolation / require_isolation() to refuse to run like this.\n"
        f"{bar}\n\n")
