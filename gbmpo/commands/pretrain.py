"""Pretrain the embedded tiny model from scratch and say whether it matches the shipped base.

    gbmpo-bench pretrain                 # the default recipe, seed 0 -> ~/.cache/gbmpo-bench
    gbmpo-bench pretrain --seed 2 --eval 200
    gbmpo-bench pretrain --resolve       # only make ready the base a run would use

The project ships the bases its reference results were made from (gbmpo/bases/tiny-<key>/),
because pretraining is reproducible only on the same float kernels: a run with
`model.name = "tiny"` loads the shipped base whenever its [pretrain] recipe matches one. This
command builds the same recipe on this machine, into the local cache (`tiny-<key>` under
$GBMPO_CACHE), compares its weights with the shipped base of the same key, and explains a
difference (torch's CPU kernel family, threads, versions). A second call reuses the local build
unless --force.

Exit status: 0 when the base is ready (whether or not it matches), 2 for a bad config or a
damaged shipped base.
"""

from __future__ import annotations

import argparse

HELP = "pretrain the embedded tiny model from scratch and compare it with the shipped base"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML run config; its [pretrain] section, and run.device "
                   "for where to pretrain (the cached result does not depend on the device)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set pretrain.steps=300")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="pretraining seed (same as --set pretrain.seed=S); the project ships "
                   "seeds 0, 1 and 2 of the default recipe")
    p.add_argument("--eval", type=int, default=0, metavar="N",
                   help="also report greedy accuracy on the first N test items of each task")
    p.add_argument("--force", action="store_true",
                   help="pretrain again even if the local cache holds this recipe")
    p.add_argument("--resolve", action="store_true",
                   help="do not rebuild: make ready the base a run with this config uses (the "
                   "shipped one when it matches; else pretrain locally) and print its path")
    p.add_argument("--ship", action="store_true",
                   help="(maintainers) copy the local build into gbmpo/bases/ as the shipped "
                   "base of this recipe")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from gbmpo import bases
    from gbmpo import config as C

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"pretrain.seed={args.seed}")
    try:
        cfg = C.load(args.config, overrides)
    except C.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from gbmpo.models import ensure_local_tiny, ensure_tiny, tiny_key, tiny_source

    key = tiny_key(cfg.pretrain)
    try:
        shipped = bases.find_shipped(key)
        if args.resolve:
            path = ensure_tiny(cfg.pretrain, progress=not args.quiet, device=cfg.run.device)
            print(f"{path}  ({tiny_source(path)} base, key {key})")
            return 0
    except bases.BaseModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    local = ensure_local_tiny(cfg.pretrain, progress=not args.quiet, device=cfg.run.device,
                              force=args.force)
    rec = bases.read_record(local)
    env = rec.get("float_env", {})
    print(f"local base:   {local}\n  {rec['params']:,} parameters, final SFT loss "
          f"{rec['final_loss']:.4f}, {rec['wall_time_s']} s; torch {env.get('torch')}, CPU "
          f"kernels {env.get('cpu_capability')}, {env.get('threads')} threads")
    if args.eval:
        rec["eval"] = _evaluate(local, cfg, args.eval)
        (local / bases.RECORD).write_text(json.dumps(rec, indent=1) + "\n")
    if shipped is None:
        seeds = ", ".join(str(r["config"]["seed"]) for r in bases.shipped_records()) or "none"
        print(f"shipped base: none for this recipe (key {key}); the project ships seeds "
              f"{seeds} of the default recipe")
    else:
        cmp = bases.compare(local, shipped)
        print(f"shipped base: {shipped}\n  final SFT loss {cmp['shipped_loss']:.4f}; CPU "
              f"kernels {cmp['shipped'].get('cpu_capability')}, "
              f"{cmp['shipped'].get('threads')} threads")
        if cmp["match"]:
            print(f"match: yes, bitwise identical weights (sha256 "
                  f"{rec['files'][bases.WEIGHTS][:16]}...)")
        else:
            print(f"match: no: {bases.explain_mismatch(cmp)}")
    if args.ship:
        return _ship(local, shipped, args.force)
    return 0


def _evaluate(path, cfg, n: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gbmpo.evaluation import evaluate
    from gbmpo.rollout.hf import HFRollout
    from gbmpo.tasks import TASKS

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = {}
    for name in cfg.pretrain.tasks:
        task = TASKS.get(name)()
        try:
            r = evaluate(task, HFRollout(model, tok), task.split("test")[:n],
                         cfg.rollout.max_new_tokens, tokenizer=tok)
        finally:
            task.close()
        out[name] = {"accuracy": r["accuracy"], "n": r["n"]}
        print(f"  {name}: greedy accuracy {r['accuracy']:.3f} on {r['n']} test items, mean "
              f"response {r['response_tokens_mean']:.1f} tokens")
    return out


def _ship(local, shipped, force: bool) -> int:
    import shutil
    import sys

    from gbmpo import bases

    target = bases.shipped_dir(local.name.removeprefix("tiny-"))
    if shipped is not None and not force:
        print(f"error: {target} exists; pass --force to replace it", file=sys.stderr)
        return 2
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(local, target)
    print(f"shipped: {target}")
    return 0
