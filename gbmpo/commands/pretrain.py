"""Build and supervised-pretrain the embedded tiny model (cached by config hash).

Prints the cached directory; a second call with the same [pretrain] section is instant.
"""

from __future__ import annotations

import argparse

HELP = "pretrain (or find in the cache) the embedded tiny model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML run config; its [pretrain] section, and run.device "
                   "for where to pretrain (the cached result does not depend on the device)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set pretrain.steps=300")
    p.add_argument("--eval", type=int, default=0, metavar="N",
                   help="also report greedy accuracy on the first N test items of each task")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from gbmpo import config as C

    try:
        cfg = C.load(args.config, args.overrides)
    except C.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from gbmpo.models import ensure_tiny

    path = ensure_tiny(cfg.pretrain, progress=not args.quiet, device=cfg.run.device)
    info = json.loads((path / "pretrain.json").read_text())
    print(f"{path}  ({info['params']:,} parameters, final SFT loss {info['final_loss']:.3f}, "
          f"{info['wall_time_s']} s)")
    if args.eval:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from gbmpo.evaluation import evaluate
        from gbmpo.rollout.hf import HFRollout
        from gbmpo.tasks import TASKS

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path)
        for name in cfg.pretrain.tasks:
            task = TASKS.get(name)()
            try:
                r = evaluate(task, HFRollout(model, tok), task.split("test")[: args.eval],
                             cfg.rollout.max_new_tokens, tokenizer=tok)
            finally:
                task.close()
            print(f"{name}: greedy accuracy {r['accuracy']:.3f} on {r['n']} test items, "
                  f"mean response {r['response_tokens_mean']:.1f} tokens")
    return 0
