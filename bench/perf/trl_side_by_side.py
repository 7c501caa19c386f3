"""RL step time of this project's trainer against TRL's GRPOTrainer, side by side in one run.

Both train the same cached tiny base on the same `arith` prompts and reward (the task's own
score), with the same objective: Dr. GRPO loss (no std scaling, sum / (B x max_len)), k3 at
beta 0.04 without TRL's importance-weighted KL (use_bias_correction_kl, not our kl_k3), PPO
clip 0.2, AdamW lr 5e-5 constant, grad-norm clip 1.0, temperature 1.0, no top-p or top-k, one
update per batch. For each shape P prompts x G samples x T new tokens, the two sides run one
after the other, each in a fresh subprocess (--threads N gives both N torch threads), for
--steps steps. Printed: the median step time of each side (wall clock: ours from metrics.jsonl's
step_time_s, TRL's from a TrainerCallback around each optimizer step, generation included on
both sides), their ratio, the CPU seconds per step (this process's, all threads; the figure
to compare when other jobs share the machine), and the mean reward and completion length so
the two did comparable work.

TRL runs as its users run it on a CPU, but without logging, saving or progress bars, and with
bf16=False so that both sides compute in float32 (TRL's default autocasts to bf16 even on a
CPU; --trl-bf16 measures that instead). TRL is not a dependency of this project: run this in
the `trl` tox environment (`tox -e trl --notest`, then `.tox/trl/bin/python ...`).

    python bench/perf/trl_side_by_side.py                       # 8x8x64 and 16x16x128, 12 steps
    python bench/perf/trl_side_by_side.py --shapes 8x8x64 --steps 6 --set pretrain.steps=100
    python bench/perf/trl_side_by_side.py --threads 1 --json side_by_side.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

MARK = "SIDE_BY_SIDE_RESULT "
LR, BETA, CLIP = 5e-5, 0.04, 0.2


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        P, G, T = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected PxGxT, e.g. 8x8x64") from None
    return P, G, T


def our_config(overrides: list[str], shape, steps: int, threads: int):
    from gbmpo import config as C

    P, G, T = shape
    return C.load(None, [
        *overrides, f"run.steps={steps}", f"run.threads={threads}",
        "algorithm.name=dr_grpo", "divergence.name=kl_k3", f"divergence.beta={BETA}",
        f"optim.lr={LR}", "optim.updates_per_batch=1", "optim.grad_clip=1.0",
        f"rollout.prompts_per_step={P}", f"rollout.samples_per_prompt={G}",
        f"rollout.max_new_tokens={T}", "rollout.temperature=1.0", "rollout.top_p=1.0",
        "eval.n=4", "eval.samples=0",  # evaluation is not part of a step; keep it small
    ])


# ---- one side per subprocess ---------------------------------------------------------------
def run_ours(cfg) -> dict:
    import gbmpo.trainer as trainer

    cpu: list[float] = []
    step = trainer._rl_step

    def timed_step(*args, **kwargs):  # CPU seconds of this process per step
        c0 = time.process_time()
        try:
            return step(*args, **kwargs)
        finally:
            cpu.append(time.process_time() - c0)

    trainer._rl_step = timed_step
    with tempfile.TemporaryDirectory(prefix="gbmpo-sbs-") as out:
        trainer.train(cfg, out, progress=False)
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"]
    return {"step_s": [r["step_time_s"] for r in rows], "cpu_s": cpu,
            "gen_s": [r["gen_time_s"] for r in rows], "train_s": [r["train_time_s"] for r in rows],
            "reward": statistics.mean(r["reward_mean"] for r in rows),
            "length": statistics.mean(r["response_len_mean"] for r in rows)}


def run_trl(cfg, base: str, bf16: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    from gbmpo.tasks import TASKS

    hf_logging.set_verbosity_error()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    R = cfg.rollout
    task = TASKS.get(cfg.task.name)(**cfg.task.params)
    examples = task.split("train")
    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    rewards: list[float] = []
    lengths: list[int] = []

    def reward(prompts, completions, completion_ids, idx, **kw):
        scores = task.score([examples[i] for i in idx], completions)
        rewards.extend(s.reward for s in scores)
        lengths.extend(len(c) for c in completion_ids)
        return [s.reward for s in scores]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.step_s, self.cpu_s = [], []

        def on_step_begin(self, args, state, control, **kw):
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.step_s.append(time.perf_counter() - self._t)
            self.cpu_s.append(time.process_time() - self._c)

    dataset = Dataset.from_list([{"prompt": task.build_prompt(ex, tok), "idx": i}
                                 for i, ex in enumerate(examples)])
    times = StepTimes()
    with tempfile.TemporaryDirectory(prefix="trl-sbs-") as out:
        args = GRPOConfig(
            output_dir=out, max_steps=cfg.run.steps, seed=cfg.run.seed,
            per_device_train_batch_size=R.prompts_per_step * R.samples_per_prompt,
            gradient_accumulation_steps=1, num_generations=R.samples_per_prompt,
            max_completion_length=R.max_new_tokens, temperature=R.temperature,
            top_p=R.top_p, top_k=0,
            loss_type="dr_grpo", scale_rewards="none", beta=cfg.divergence.beta,
            use_bias_correction_kl=False, epsilon=CLIP, num_iterations=1,
            learning_rate=cfg.optim.lr, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=cfg.optim.grad_clip,
            use_cpu=True, bf16=bf16,
            report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
            log_completions=False, dataloader_num_workers=0)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args,
                              train_dataset=dataset, processing_class=tok, callbacks=[times])
        trainer.train()
    task.close()
    return {"step_s": times.step_s, "cpu_s": times.cpu_s, "reward": statistics.mean(rewards),
            "length": statistics.mean(lengths)}


def child(args) -> None:
    cfg = our_config(args.overrides, args.shape, args.steps, args.threads)
    result = run_ours(cfg) if args.side == "ours" else run_trl(cfg, args.base, args.trl_bf16)
    print(MARK + json.dumps(result), flush=True)


# ---- the parent: one subprocess per side and shape ----------------------------------------
def side(name: str, args, shape, base: str) -> dict:
    cmd = [sys.executable, __file__, "--side", name, "--base", base,
           "--shapes", "x".join(map(str, shape)), "--steps", str(args.steps),
           "--threads", str(args.threads), *(["--trl-bf16"] if args.trl_bf16 else [])]
    for o in args.overrides:
        cmd += ["--set", o]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(MARK)]
    if proc.returncode or not lines:
        raise SystemExit(f"the {name} side failed (exit {proc.returncode}) for shape {shape}")
    return json.loads(lines[-1][len(MARK):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=parse_shape, nargs="+",
                    default=[(8, 8, 64), (16, 16, 128)], help="PxGxT: prompts, samples, tokens")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads on both sides (0: each side's default; ours "
                    "sizes them to the idle cores, TRL takes torch's)")
    ap.add_argument("--trl-bf16", action="store_true",
                    help="TRL with its default bf16 autocast instead of float32")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="override of our run config (e.g. pretrain.steps=100: the base both "
                    "sides train)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        args.shape = args.shapes[0]
        return child(args)
    try:
        import trl
    except ImportError:
        raise SystemExit("TRL is not installed here; run this in the trl tox environment "
                         "(tox -e trl --notest; .tox/trl/bin/python bench/perf/...)") from None
    import torch

    from gbmpo.models import ensure_tiny

    cfg = our_config(args.overrides, args.shapes[0], args.steps, args.threads)
    t0 = time.time()
    base = str(ensure_tiny(cfg.pretrain))
    print(f"base {base} ready in {time.time() - t0:.1f} s; TRL {trl.__version__}, torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"threads {args.threads or 'each side default'}, TRL "
          f"{'bf16 autocast' if args.trl_bf16 else 'float32'}")
    report = {"trl": trl.__version__, "torch": torch.__version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "steps": args.steps, "threads": args.threads,
              "trl_bf16": args.trl_bf16, "shapes": []}
    print(f"{'shape PxGxT':<13}{'ours s/step':>12}{'TRL s/step':>12}{'TRL/ours':>10}"
          f"{'ours cpu':>10}{'TRL cpu':>10}   reward ours/TRL   length ours/TRL")
    for shape in args.shapes:
        ours = side("ours", args, shape, base)
        theirs = side("trl", args, shape, base)
        m_ours, m_trl = statistics.median(ours["step_s"]), statistics.median(theirs["step_s"])
        c_ours, c_trl = statistics.median(ours["cpu_s"]), statistics.median(theirs["cpu_s"])
        print(f"{'x'.join(map(str, shape)):<13}{m_ours:>12.2f}{m_trl:>12.2f}"
              f"{m_trl / m_ours:>9.2f}x{c_ours:>10.2f}{c_trl:>10.2f}"
              f"   {ours['reward']:.3f} / {theirs['reward']:.3f}"
              f"     {ours['length']:.1f} / {theirs['length']:.1f}")
        print(f"{'':13}ours: generation {statistics.median(ours['gen_s']):.2f} s, training "
              f"{statistics.median(ours['train_s']):.2f} s (medians); load "
              f"{os.getloadavg()[0]:.1f}")
        report["shapes"].append({"shape": shape, "ours": ours, "trl": theirs,
                                 "median_ours_s": m_ours, "median_trl_s": m_trl,
                                 "ratio": m_trl / m_ours})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
