"""RL step cost and learning on the embedded tiny model.

Runs one default cell (dr_grpo + kl_k3, 8 prompts x 8 samples, arith) from the cached
pretrained base and prints: base and final greedy test accuracy, and per-step generation and
training time and tokens/s (median over steps), and the CPU seconds of this process per step
(all threads together). Wall-clock figures only mean something on an otherwise idle machine;
the load average before and after is printed, and the CPU figure is the one to compare when
other jobs share the cores (with one thread; more threads spin while they wait).

    python bench/perf/trainer.py                 # 40 steps, the issue's learning check
    python bench/perf/trainer.py --steps 12 --set run.threads=1
    python bench/perf/trainer.py --steps 5 --set divergence.name=neural_mirror
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import gbmpo.trainer as trainer
from gbmpo import config as C
from gbmpo.models import ensure_tiny


def count_step_cpu(backend_name: str) -> dict[str, list[float]]:
    """Wrap the trainer's step, and its rollout backend's generate, so that each RL step
    appends the CPU seconds of this process it took, and of its generation (evaluation's
    generation is not counted)."""
    from gbmpo.rollout import BACKENDS

    cpu: dict[str, list[float]] = {"step": [], "gen": []}
    step, cls = trainer._rl_step, BACKENDS.get(backend_name)
    generate, in_step = cls.generate, [False]

    def timed_step(*args, **kwargs):
        c0, in_step[0] = time.process_time(), True
        try:
            return step(*args, **kwargs)
        finally:
            in_step[0] = False
            cpu["step"].append(time.process_time() - c0)

    def timed_generate(self, *args, **kwargs):
        c0 = time.process_time()
        try:
            return generate(self, *args, **kwargs)
        finally:
            if in_step[0]:
                cpu["gen"].append(time.process_time() - c0)

    trainer._rl_step, cls.generate = timed_step, timed_generate
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=None, help="keep the cell directory here")
    args = ap.parse_args()
    cfg = C.load(None, [f"run.steps={args.steps}", *args.overrides])
    t0 = time.time()
    ensure_tiny(cfg.pretrain)
    print(f"base model ready in {time.time() - t0:.1f} s")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gbmpo-perf-"))
    load0 = os.getloadavg()[0]
    cpu = count_step_cpu(cfg.rollout.backend)
    t0 = time.time()
    result = trainer.train(cfg, out, progress=True)
    wall = time.time() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in rows if r["kind"] == "train"]
    med = {k: statistics.median(r[k] for r in tr) for k in
           ("gen_time_s", "train_time_s", "step_time_s", "gen_tokens_per_s",
            "train_tokens_per_s")} if tr else {}
    m = result["metrics"]
    print(f"cell: {cfg.task.name} {cfg.algorithm.name} + {cfg.divergence.name} "
          f"(beta {cfg.divergence.beta}), {args.steps} steps of "
          f"{cfg.rollout.prompts_per_step}x{cfg.rollout.samples_per_prompt}, "
          f"status {result['status']}")
    print(f"greedy accuracy on {result['eval']['n']} test items: base "
          f"{m['base_accuracy']['value']:.3f} -> final "
          f"{m.get('accuracy', {}).get('value', float('nan')):.3f}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"torch threads {cfg.run.threads or torch.get_num_threads()}, {cores} usable cores, "
          f"load average {load0:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    for k, v in med.items():
        print(f"  median {k:<20} {v:10.2f}")
    for k, v in cpu.items():
        if v:
            print(f"  median cpu_{k + '_s':<16} {statistics.median(v):10.2f}")
    print(f"  cell wall time            {wall:10.1f} s (includes 2 evaluations)")


if __name__ == "__main__":
    main()
