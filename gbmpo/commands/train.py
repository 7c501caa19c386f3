"""Run one training cell: config.toml, metrics.jsonl and result.json go to --out.

Configuration: defaults <- --preset NAME <- --config FILE <- --set section.key=value
(repeatable). Unknown keys and unknown plugin names fail before any model loads.
`--help-config` lists every key.

Try a divergence for a minute, then its comparison partner, on the shipped tiny base:

    gbmpo-bench train --preset quick --set divergence.name=my_div --set divergence.beta=0.1
    gbmpo-bench train --preset quick --set divergence.name=none
    gbmpo-bench leaderboard runs/quick --baseline dr_grpo:none

Each run ends with a one-row summary in the same columns, so two runs line up: greedy accuracy
before and after, the mean reward of the first and last step, reg/pg (the mean |beta * D| over
the |policy term|: near 0, the penalty did nothing), kl_pi_pi0 (per-token KL of the trained
policy from the base on its own samples), mean response length and wall time.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gbmpo.presets import PRESETS, help_text

HELP = "train one cell (one algorithm x divergence x seed)"

COLUMNS = ("divergence", "beta", "algorithm", "seed", "steps", "base_acc", "acc", "delta",
           "reward_first", "reward_last", "reg/pg", "kl_pi_pi0", "resp_tokens", "wall_s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="start from a named preset (listed below)")
    p.add_argument("--config", help="TOML run config (sections: run, model, pretrain, task, "
                   "algorithm, divergence, reference, rollout, optim, eval)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set divergence.name=kl_k3 --set run.steps=10")
    p.add_argument("--out", default=None,
                   help="output directory (default runs/<cell id>, or runs/<preset>/<cell id> "
                   "with --preset; cell id = <task>__<algo>__<div>__s<seed>__<config hash>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    p.epilog = help_text()


def default_out(cfg, preset: str | None) -> str:
    cell = (f"{cfg.task.name}__{cfg.algorithm.name}__{cfg.divergence.name}__s{cfg.run.seed}__"
            f"{cfg.hash()}")
    return f"runs/{preset}/{cell}" if preset else f"runs/{cell}"


def summary_row(result: dict, out: Path) -> dict[str, str]:
    """The run as one row of COLUMNS (strings), from result.json and metrics.jsonl."""
    cfg, m = result["config"], result["metrics"]
    rewards = []
    metrics_file = out / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line)
            if row.get("kind") == "train" and row.get("reward_mean") is not None:
                rewards.append(row["reward_mean"])

    def num(key: str, fmt: str) -> str:
        value = m.get(key, {}).get("value")
        return "n/a" if value is None else format(value, fmt)

    base, acc = m["base_accuracy"]["value"], m.get("accuracy", {}).get("value")
    return {
        "divergence": result["divergence"], "beta": f"{cfg['divergence']['beta']:g}",
        "algorithm": result["algorithm"], "seed": str(result["seed"]),
        "steps": str(cfg["run"]["steps"]), "base_acc": f"{base:.3f}", "acc": num("accuracy", ".3f"),
        "delta": "n/a" if acc is None else f"{acc - base:+.3f}",
        "reward_first": f"{rewards[0]:.3f}" if rewards else "n/a",
        "reward_last": f"{rewards[-1]:.3f}" if rewards else "n/a",
        "reg/pg": num("reg_pg_ratio", ".1e"), "kl_pi_pi0": num("kl_pi_pi0", ".1e"),
        "resp_tokens": num("response_tokens_mean", ".1f"),
        "wall_s": f"{result['wall_time_s']:.0f}",
    }


def print_summary(result: dict, out: Path, preset: str | None, default_layout: bool) -> None:
    row = summary_row(result, out)
    widths = [max(len(c), len(row[c])) for c in COLUMNS]
    print(f"{result['status']}: {out}/result.json")
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    print("  ".join(row[c].ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    n = result["eval"]["n"]
    if result["metrics"].get("accuracy", {}).get("value") is not None:
        print(f"greedy accuracy on {n} {result['eval']['split']} items: one accuracy is within "
              f"+-{0.98 / math.sqrt(n):.2f} of its expectation (95%, worst case), so a smaller "
              "difference between two runs can be noise")
    if preset and result["divergence"] != "none":
        board = (f"; then gbmpo-bench leaderboard {out.parent} --baseline "
                 f"{result['algorithm']}:none" if default_layout else "")
        print(f"compare: gbmpo-bench train --preset {preset} --set divergence.name=none (with "
              f"the same other --set){board}")


def run(args: argparse.Namespace) -> int:
    import sys

    from gbmpo import config as C
    from gbmpo import presets

    if args.help_config:
        print(C.describe())
        return 0
    try:
        cfg = presets.load(args.preset, args.config, args.overrides)
    except C.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or default_out(cfg, args.preset))
    from gbmpo.trainer import train

    result = train(cfg, out, progress=not args.quiet and sys.stderr.isatty())
    print_summary(result, out, args.preset, default_layout=args.out is None)
    return 0
