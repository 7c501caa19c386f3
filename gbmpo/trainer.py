"""The one training loop. It never branches on an algorithm, divergence or task name.

    prompts (P) -> rollout (G each) -> verifier rewards (P*G) -> advantages
    -> policy / reference log-probs of the sampled tokens -> TokenView
    -> per_token = surrogate + beta * D -> aggregate -> backward, clip, step
    -> metrics.jsonl row; periodic and final greedy evaluation -> result.json
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gbmpo.algorithms import ALGORITHMS
from gbmpo.config import RunConfig
from gbmpo.core import TokenView, aggregate, masked
from gbmpo.divergences import DIVERGENCES
from gbmpo.evaluation import evaluate
from gbmpo.models import load_policy_and_reference
from gbmpo.results import (
    SCHEMA_VERSION,
    JsonlWriter,
    provenance,
    write_json_atomic,
    write_text_atomic,
)
from gbmpo.rollout import BACKENDS
from gbmpo.tasks import TASKS


class Diverged(RuntimeError):
    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool, threads: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_plugin(registry, name: str, params: dict[str, Any], seed: int):
    """Instantiate a registered class; pass `seed` only to constructors that declare it."""
    cls = registry.get(name)
    kw = dict(params)
    if "seed" in inspect.signature(cls).parameters and "seed" not in kw:
        kw["seed"] = seed
    return cls(**kw)


def sequence_logprobs(model, prompt_ids, prompt_mask, comp_ids, comp_mask, temperature: float):
    """log pi(y_t | prompt, y_<t) for each completion token, (B, T), plus the (B, T, V) logits.

    Positions come from the attention mask, as in `generate` with left padding.
    """
    ids = torch.cat([prompt_ids, comp_ids], dim=1)
    attn = torch.cat([prompt_mask, comp_mask], dim=1).long()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    Lp = prompt_ids.shape[1]
    logits_BTV = logits[:, Lp - 1 : -1].float() / temperature
    logp_BT = torch.log_softmax(logits_BTV, dim=-1).gather(-1, comp_ids[..., None]).squeeze(-1)
    return logp_BT, logits_BTV


def _masked_mean(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> float:
    return float(masked(x_BT, mask_BT).sum() / mask_BT.sum().clamp(min=1))


def train(cfg: RunConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run one cell; write config.toml, metrics.jsonl and result.json into out_dir."""
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.toml", cfg.to_toml())
    seed_everything(cfg.run.seed, cfg.run.deterministic, cfg.run.threads)
    device = pick_device(cfg.run.device)

    task = TASKS.get(cfg.task.name)(**cfg.task.params)
    isolation = task.isolation()  # the sandbox level every code reward is computed under
    algo = build_plugin(ALGORITHMS, cfg.algorithm.name, cfg.algorithm.params, cfg.run.seed)
    div = build_plugin(DIVERGENCES, cfg.divergence.name, cfg.divergence.params, cfg.run.seed)
    train_set = task.split("train")
    eval_set = task.split(cfg.eval.split)[: cfg.eval.n]
    overlap = {e.id for e in eval_set} & {e.id for e in train_set}
    if overlap:
        raise RuntimeError(f"{len(overlap)} evaluation examples also occur in train: "
                           f"{sorted(overlap)[:3]}; the task's splits are not disjoint")

    policy, reference, tok = load_policy_and_reference(cfg, device, progress=progress)
    backend = BACKENDS.get(cfg.rollout.backend)(policy, tok, **cfg.rollout.params)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    sched = make_schedule(opt, cfg)
    eval_tokens = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    metrics = JsonlWriter(out / "metrics.jsonl")

    def run_eval(step: int) -> dict[str, float]:
        cache = _base_eval_cache(cfg, eval_tokens) if step == 0 else None
        if cache is not None and cache.is_file():
            r = json.loads(cache.read_text())
        else:
            r = evaluate(task, backend, eval_set, eval_tokens, cfg.eval.batch_size, tok)
            if cache is not None:
                write_json_atomic(cache, r)
        metrics.write({"kind": "eval", "step": step, **r})
        return r

    rng = random.Random(cfg.run.seed)
    order: list[int] = []
    status, diverged_step, reason, last_train = "completed", None, None, {}
    ratios: list[float] = []  # |beta D| / |pg| per step, averaged into the result
    try:
        base = run_eval(0)
        final = base
        bar = _progress(cfg.run.steps, progress)
        for step in range(1, cfg.run.steps + 1):
            if len(order) < cfg.rollout.prompts_per_step:
                order += rng.sample(range(len(train_set)), len(train_set))
            P = cfg.rollout.prompts_per_step
            idx, order = order[:P], order[P:]
            last_train = _rl_step(cfg, step, [train_set[i] for i in idx], task, tok, policy,
                                  reference, backend, algo, div, opt, sched, device)
            metrics.write({"kind": "train", "step": step, **last_train})
            ratios.append(last_train["reg_pg_ratio"])
            if cfg.reference.update_every and step % cfg.reference.update_every == 0:
                reference.load_state_dict(policy.state_dict())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{last_train['reward_mean']:.3f}")
            if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step < cfg.run.steps:
                run_eval(step)
        if bar is not None:
            bar.close()
        if cfg.run.steps:
            final = run_eval(cfg.run.steps)
        for name, params in cfg.eval.transfer.items():
            extra = TASKS.get(name)(**params)
            try:
                r = evaluate(extra, backend, extra.split("test")[: cfg.eval.n], eval_tokens,
                             cfg.eval.batch_size, tok)
            finally:
                extra.close()
            metrics.write({"kind": "eval", "step": cfg.run.steps, "task": name, **r})
            final = {**final, **{f"{name}_{k}": v for k, v in r.items() if k.startswith("acc")}}
        if cfg.run.save_model:
            policy.save_pretrained(out / "model")
            tok.save_pretrained(out / "model")
    except Diverged as e:
        status, diverged_step, reason, final = "diverged", e.step, str(e), None
    finally:
        metrics.close()
        backend.close()
        task.close()

    result = _result(cfg, status, reason, diverged_step, base, final, last_train, ratios, out,
                     div, task, isolation, time.time() - t_start)
    write_json_atomic(out / "result.json", result)
    return result


def _base_eval_cache(cfg: RunConfig, max_new_tokens: int) -> Path | None:
    """Greedy evaluation of the untouched embedded model is the same for every cell of a grid;
    it is cached beside the checkpoint, keyed by everything that determines it."""
    if cfg.model.name != "tiny" or cfg.run.device != "cpu":
        return None
    from gbmpo.models import tiny_dir

    key = json.dumps([cfg.task.name, cfg.task.params, TASKS.get(cfg.task.name).version,
                      cfg.eval.split, cfg.eval.n, max_new_tokens, cfg.run.dtype],
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return tiny_dir(cfg.pretrain) / "base_evals" / f"{digest}.json"


def _slices(B: int, micro: int) -> list[slice]:
    step = micro or B
    return [slice(i, min(i + step, B)) for i in range(0, B, step)]


def _rl_step(cfg, step, examples, task, tok, policy, reference, backend, algo, div, opt, sched,
             device):
    G, R = cfg.rollout.samples_per_prompt, cfg.rollout
    t0 = time.time()
    prompts = [task.build_prompt(ex, tok) for ex in examples]
    batch = backend.generate(prompts, n=G, max_new_tokens=R.max_new_tokens,
                             temperature=R.temperature, top_p=R.top_p,
                             seed=cfg.run.seed * 1_000_003 + step)
    gen_time = time.time() - t0
    scores = task.score([ex for ex in examples for _ in range(G)], batch.texts)
    rewards_B = torch.tensor([s.reward for s in scores], dtype=torch.float32, device=device)
    # off-policy preference pairs (f-HAL): drawn before this batch is offered to the algorithm
    pairs = algo.preference_pairs(step)
    algo.observe([p for p in prompts for _ in range(G)], batch.texts,
                 [s.correct for s in scores], batch.group_ids.tolist())
    pair_batch = _encode_pairs(pairs, tok, device) if pairs else None
    group_ids_B = batch.group_ids.to(device)
    prompt_ids, prompt_mask = batch.prompt_ids.to(device), batch.prompt_mask.to(device)
    comp_ids, mask = batch.completion_ids.to(device), batch.completion_mask.to(device)
    B = comp_ids.shape[0]
    parts = _slices(B, cfg.optim.micro_batch_size)
    n_tokens = float(mask.sum())

    t1 = time.time()
    adv_B = algo.advantages(rewards_B, group_ids_B).detach()

    def logprobs(model, s: slice):
        return sequence_logprobs(model, prompt_ids[s], prompt_mask[s], comp_ids[s], mask[s],
                                 R.temperature)

    def _ref_logits(s: slice) -> torch.Tensor:
        with torch.no_grad():
            return logprobs(reference, s)[1]

    with torch.no_grad():
        logp_old = torch.cat([logprobs(policy, s)[0] for s in parts])
        logp_ref = torch.cat([logprobs(reference, s)[0] for s in parts])
    policy.train()
    pg_BT, D_BT = torch.zeros_like(logp_old), torch.zeros_like(logp_old)
    clipped_BT = torch.zeros_like(mask)
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    pair_loss = 0.0
    for _ in range(cfg.optim.updates_per_batch):
        opt.zero_grad(set_to_none=True)
        loss_total = 0.0
        for s in parts:
            logp, logits = logprobs(policy, s)
            view = TokenView(
                logp=logp, logp_old=logp_old[s], logp_ref=logp_ref[s], mask=mask[s],
                rewards=rewards_B[s], group_ids=group_ids_B[s],
                # full-vocabulary log-probs only for divergences that ask; the reference
                # forward is then recomputed for this micro-batch, not kept for every batch
                logits_fn=lambda lg=logits, s=s: (
                    torch.log_softmax(lg, -1), torch.log_softmax(_ref_logits(s), -1)),
            )
            # ---- the algorithm and the divergence meet here, and only here ----
            pg, stats = algo.surrogate(view, adv_B[s])
            D = div.per_token(view)
            loss = aggregate(pg + cfg.divergence.beta * D, view.mask, algo.aggregation,
                             R.max_new_tokens, n_tokens=n_tokens, n_seqs=B)
            if not torch.isfinite(loss):
                raise Diverged(step, "loss")
            loss.backward()
            loss_total += float(loss.detach())
            pg_BT[s], D_BT[s] = pg.detach(), D.detach()
            if "clipped" in stats:
                clipped_BT[s] = stats["clipped"]
        if pair_batch is not None:
            pl = algo.pair_loss(*_pair_logratios(policy, reference, pair_batch, R.temperature))
            if not torch.isfinite(pl):
                raise Diverged(step, "pair loss")
            pl.backward()
            pair_loss = float(pl.detach())
            loss_total += pair_loss
        grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), clip))
        if not math.isfinite(grad_norm):
            raise Diverged(step, "gradient norm")
        opt.step()
        sched.step()
    backend.sync_weights()
    train_time = time.time() - t1

    lengths = mask.sum(dim=1).float()
    abs_pg = _masked_mean(pg_BT.abs(), mask)
    abs_reg = _masked_mean((cfg.divergence.beta * D_BT).abs(), mask)
    return {
        "reward_mean": float(rewards_B.mean()),
        "reward_std": float(rewards_B.std()),
        "response_len_mean": float(lengths.mean()),
        "response_len_max": float(lengths.max()),
        "truncation_rate": float(batch.truncated.float().mean()),
        "clip_frac": _masked_mean(clipped_BT.float(), mask),
        "divergence": _masked_mean(D_BT, mask),
        "reg_pg_ratio": abs_reg / abs_pg if abs_pg > 0 else (0.0 if abs_reg == 0 else math.inf),
        "pg_loss": float(aggregate(pg_BT, mask, algo.aggregation, R.max_new_tokens)),
        "loss": loss_total,
        "pairs": len(pairs),
        "pair_loss": pair_loss,
        "grad_norm": grad_norm,
        "lr": sched.get_last_lr()[0],
        "gen_time_s": gen_time,
        "train_time_s": train_time,
        "step_time_s": time.time() - t0,
        "gen_tokens_per_s": n_tokens / gen_time if gen_time > 0 else 0.0,
        "train_tokens_per_s": (n_tokens + float(prompt_mask.sum())) * cfg.optim.updates_per_batch
        / train_time if train_time > 0 else 0.0,
    }


def _encode_pairs(pairs, tok, device):
    """Preference pairs as one batch: chosen completions first, then rejected ones, each after
    its left-padded prompt and ended with EOS (a finished response), right-padded."""
    prompts = [p.prompt for p in pairs] * 2
    comps = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids = [tok.encode(c, add_special_tokens=False) + [tok.eos_token_id] for c in comps]
    comp = torch.full((len(ids), max(map(len, ids))), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(comp, dtype=torch.bool)
    for i, row in enumerate(ids):
        comp[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return (enc["input_ids"].to(device), enc["attention_mask"].bool().to(device), comp.to(device),
            mask.to(device))


def _pair_logratios(policy, reference, pair_batch, temperature):
    """(chosen, rejected) sequence log-ratios sum_t log(pi/pi_ref), each (K,); grad via pi."""
    prompt_ids, prompt_mask, comp, mask = pair_batch
    logp = sequence_logprobs(policy, prompt_ids, prompt_mask, comp, mask, temperature)[0]
    with torch.no_grad():
        logp_ref = sequence_logprobs(reference, prompt_ids, prompt_mask, comp, mask,
                                     temperature)[0]
    lr_K2 = masked(logp - logp_ref, mask).sum(dim=1)
    K = lr_K2.shape[0] // 2
    return lr_K2[:K], lr_K2[K:]


def make_schedule(opt, cfg: RunConfig):
    """Linear warmup over warmup_ratio of the optimizer steps, then constant or cosine to 0."""
    total = max(1, cfg.run.steps * cfg.optim.updates_per_batch)
    warm = int(cfg.optim.warmup_ratio * total)

    def factor(i: int) -> float:
        if i < warm:
            return (i + 1) / (warm + 1)
        if cfg.optim.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, total - warm)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="rl steps", file=sys.stderr)


def _metric(value, direction: str) -> dict[str, Any]:
    return {"value": value, "direction": direction}


def _result(cfg, status, reason, diverged_step, base, final, last_train, ratios, out, div,
            task, isolation, wall):
    metrics: dict[str, Any] = {"base_accuracy": _metric(base["accuracy"], "max")}
    if final is not None:
        metrics["accuracy"] = _metric(final["accuracy"], "max")
        for k, v in final.items():
            if k.startswith("accuracy_") or "_accuracy" in k:
                metrics[k] = _metric(v, "max")
        metrics["response_tokens_mean"] = _metric(final["response_tokens_mean"], "min")
        metrics["truncation_rate"] = _metric(final["truncation_rate"], "min")
    if last_train:
        metrics["train_reward_last"] = _metric(last_train["reward_mean"], "max")
    finite = [r for r in ratios if math.isfinite(r)]  # inf: a step with no policy signal
    if finite:
        metrics["reg_pg_ratio"] = _metric(sum(finite) / len(finite), "none")
    return {
        "schema_version": SCHEMA_VERSION,
        "cell_id": out.name,
        "grid": out.parent.name if (out.parent / "grid.json").exists() else None,
        "task": cfg.task.name,
        "algorithm": cfg.algorithm.name,
        "divergence": cfg.divergence.name,
        "seed": cfg.run.seed,
        "status": status,
        "reason": reason,
        "diverged_step": diverged_step,
        "metrics": metrics,
        "eval": {"split": cfg.eval.split, "n": base["n"], "greedy": True},
        "wall_time_s": round(wall, 2),
        "versions": {"task": type(task).version, "schema": SCHEMA_VERSION},
        "divergence_info": div.describe(),
        "provenance": provenance({"sandbox_isolation": isolation}),
        "config": cfg.to_dict(),
    }
