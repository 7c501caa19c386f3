"""Pretraining beside other CPU-bound work: does it slow down by its fair share, or collapse?

    python bench/perf/contention.py [--steps 60] [--busy 0 1 3] [--repeats 1]

Times `gbmpo-bench pretrain --set pretrain.steps=N --force` (a fresh local build in a temporary
cache, so nothing is reused) alone and beside 1 and 3 single-threaded busy loops (pure Python,
one process each), and prints each time with its ratio to the time alone. On 2 cores a fair
share is 2x beside one busy loop (the pretraining gets one core of two) and 4x beside three
(half a core); the target is at most 2.2x and 4x. The pretraining is left to size its
own threads (OMP_NUM_THREADS is removed from its environment), as a user's run would be.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def run_once(steps: int, busy: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    stop = multiprocessing.get_context("spawn").Event()
    loops = [multiprocessing.get_context("spawn").Process(target=_spin, args=(stop,))
             for _ in range(busy)]
    for p in loops:
        p.start()
    time.sleep(1.0 if busy else 0.0)  # let the neighbours get going
    try:
        with tempfile.TemporaryDirectory() as cache:
            env["GBMPO_CACHE"] = cache
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gbmpo", "pretrain", "--quiet", "--force",
                            "--set", f"pretrain.steps={steps}"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0
    finally:
        stop.set()
        for p in loops:
            p.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--repeats", type=int, default=1, help="runs per setting (median taken)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.steps} pretraining steps, {cores} usable cores")
    alone = None
    for busy in sorted(set([0] + args.busy)):
        times = sorted(run_once(args.steps, busy) for _ in range(args.repeats))
        t = times[len(times) // 2]
        alone = t if busy == 0 else alone
        share = cores - busy if busy < cores else cores / (busy + 1)  # cores left to us
        print(f"beside {busy} busy loop(s): {t:6.1f} s  ({t / alone:4.2f}x alone; a fair "
              f"share would be {cores / share:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
