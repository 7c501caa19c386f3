"""List registered algorithms, divergences, tasks and rollout backends with their one-line docs.

A plugin file that fails to import, or a name registered twice, is reported after the list as
one `error:` line naming the file(s); the exit status is then 1.
"""

from __future__ import annotations

import argparse

HELP = "list registered algorithms, divergences, tasks or rollout backends"
KINDS = ("algorithms", "divergences", "tasks", "backends")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", choices=KINDS, help="what to list (default: everything)")


def registries() -> dict:
    from gbmpo.algorithms import ALGORITHMS
    from gbmpo.divergences import DIVERGENCES
    from gbmpo.rollout import BACKENDS
    from gbmpo.tasks import TASKS

    return {"algorithms": ALGORITHMS, "divergences": DIVERGENCES, "tasks": TASKS,
            "backends": BACKENDS}


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings

    from gbmpo.registry import PluginWarning, first_doc_line

    regs = registries()
    problems = []
    for kind in [args.kind] if args.kind else KINDS:
        with warnings.catch_warnings():  # reported below as errors, not twice
            warnings.simplefilter("ignore", PluginWarning)
            entries = list(regs[kind].items())
            problems += regs[kind].problems()
        print(f"{kind}:")
        width = max((len(n) for n, _ in entries), default=0)
        for name, obj in entries:
            print(f"  {name:<{width}}  {first_doc_line(obj)}")
    sys.stdout.flush()
    for problem in problems:
        print(f"error: {problem.message}", file=sys.stderr)
    return 1 if problems else 0
