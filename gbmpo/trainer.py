"""The one training loop. It never branches on an algorithm, divergence or task name.

    prompts (P) -> rollout (G each) -> verifier rewards (P*G) -> advantages
    -> policy / reference log-probs of the sampled tokens -> TokenView
    -> per_token = surrogate + beta * D -> aggregate -> backward, clip, step
    -> metrics.jsonl row; the yardstick (greedy, pass@k, drift from pi_0) before training,
       every run.eval_every steps and at the end -> result.json
"""

from __future__ import annotations

import copy
import dataclasses
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

from gbmpo import evaluation
from gbmpo.algorithms import ALGORITHMS
from gbmpo.checks import check_plugin_output
from gbmpo.config import RunConfig
from gbmpo.core import TokenView, aggregate, k3, masked
from gbmpo.divergences import DIVERGENCES
from gbmpo.evaluation import completion_logits, evaluate, yardstick
from gbmpo.kl_control import BetaController
from gbmpo.models import base_identity, cache_root, file_lock, load_policy_and_reference
from gbmpo.reporting import open_reporters
from gbmpo.results import (
    SCHEMA_VERSION,
    JsonlWriter,
    provenance,
    write_json_atomic,
    write_text_atomic,
)
from gbmpo.rollout import BACKENDS
from gbmpo.tasks import TASKS
from gbmpo.threads import ThreadGovernor


class Diverged(RuntimeError):
    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_plugin(registry, name: str, params: dict[str, Any], seed: int):
    """Instantiate a registered class; pass `seed` only to constructors that declare it."""
    cls = registry.get(name)
    kw = dict(params)
    if "seed" in inspect.signature(cls).parameters and "seed" not in kw:
        kw["seed"] = seed
    return cls(**kw)


def sequence_logprobs(model, prompt_ids, prompt_mask, comp_ids, comp_mask, temperature: float,
                      group: int = 1):
    """log pi(y_t | prompt, y_<t) for each completion token, (B, T), plus the (B, T, V) logits.
    `group`: completions per prompt, in prompt-major order (each prompt is then run once)."""
    logits_BTV = completion_logits(model, prompt_ids, prompt_mask, comp_ids, comp_mask,
                                   temperature, group)
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
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    threads = ThreadGovernor(cfg.run.threads)  # run.threads, else the cores free right now
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
    base = base_identity(cfg)
    # pi_0, the starting weights, for the drift metrics: the reference itself while it stays
    # the initial policy, else a frozen copy (iterative references move; model.reference may
    # name other weights).
    if cfg.reference.update_every == 0 and not cfg.model.reference:
        initial = reference
    else:
        initial = copy.deepcopy(policy).eval().requires_grad_(False)
    backend = BACKENDS.get(cfg.rollout.backend)(policy, tok, **cfg.rollout.params)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    sched = make_schedule(opt, cfg)
    beta = BetaController(cfg.divergence.beta, cfg.divergence.target_kl,
                          cfg.divergence.kl_horizon)
    metrics = _Metrics(out / "metrics.jsonl",
                       open_reporters(cfg.run.report_to, out, out.name, cfg.to_dict()))
    transfer = {name: TASKS.get(name)(**params) for name, params in cfg.eval.transfer.items()}

    def run_eval(step: int) -> dict[str, Any]:
        """The yardstick at `step`; the untouched base's (step 0) is cached per base (cells
        of one base that start together wait for one evaluation instead of repeating it)."""
        cache = _base_eval_cache(cfg, base) if step == 0 else None
        if cache is None:
            return measure(step)
        with file_lock(cache.with_suffix(".lock")):
            if not cache.is_file():
                write_json_atomic(cache, measure(step))
            return json.loads(cache.read_text())

    def measure(step: int) -> dict[str, Any]:
        r = yardstick(cfg, task, eval_set, backend, tok, policy, initial, device)
        final = step == cfg.run.steps
        if step == 0 or final:  # retention and transfer: before and after training
            eval_tokens = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
            for name, extra in transfer.items():
                t = evaluate(extra, backend, extra.split("test")[: cfg.eval.n], eval_tokens,
                             cfg.eval.batch_size, tok)
                r["transfer"] = {**r.get("transfer", {}), name: t}
        return r

    def log_eval(step: int, r: dict[str, Any]) -> None:
        metrics.write({"kind": "eval", "step": step, **_scalars(r)})
        for name, t in r.get("transfer", {}).items():
            metrics.write({"kind": "eval", "step": step, "task": name, **_scalars(t)})

    rng = random.Random(cfg.run.seed)
    order: list[int] = []
    status, diverged_step, reason, last_train = "completed", None, None, {}
    ratios: dict[str, list[float]] = {"reg_pg_ratio": [], "reg_pg_grad_ratio": []}
    base_eval = final = None
    try:
        base_eval = final = run_eval(0)
        log_eval(0, base_eval)
        bar = _progress(cfg.run.steps, progress)
        for step in range(1, cfg.run.steps + 1):
            if len(order) < cfg.rollout.prompts_per_step:
                order += rng.sample(range(len(train_set)), len(train_set))
            P = cfg.rollout.prompts_per_step
            idx, order = order[:P], order[P:]
            is_eval_step = (step == 1 or step == cfg.run.steps
                            or bool(cfg.run.eval_every and step % cfg.run.eval_every == 0))
            last_train = _rl_step(cfg, step, [train_set[i] for i in idx], task, tok, policy,
                                  reference, initial, backend, algo, div, beta, opt, sched,
                                  device, measure_grads=is_eval_step)
            metrics.write({"kind": "train", "step": step, **last_train})
            threads.tick()
            for k, vals in ratios.items():
                if k in last_train:
                    vals.append(last_train[k])
            if cfg.reference.update_every and step % cfg.reference.update_every == 0:
                reference.load_state_dict(policy.state_dict())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{last_train['reward_mean']:.3f}")
            if cfg.run.eval_every and step % cfg.run.eval_every == 0 and step < cfg.run.steps:
                log_eval(step, run_eval(step))
        if bar is not None:
            bar.close()
        if cfg.run.steps:
            final = run_eval(cfg.run.steps)
            log_eval(cfg.run.steps, final)
        if cfg.run.save_model:
            policy.save_pretrained(out / "model")
            tok.save_pretrained(out / "model")
    except Diverged as e:
        status, diverged_step, reason, final = "diverged", e.step, str(e), None
    finally:
        metrics.close()
        backend.close()
        sandbox_report = task.sandbox_report()  # final counts, before the pool closes
        task.close()
        for extra in transfer.values():
            extra.close()

    result = _result(cfg, status, reason, diverged_step, base_eval, final, last_train, ratios,
                     beta, out, div, task, isolation, base, device, time.time() - t_start,
                     sandbox_report)
    write_json_atomic(out / "result.json", result)
    return result


class _Metrics:
    """metrics.jsonl, and the same rows to the live loggers of run.report_to."""

    def __init__(self, path: Path, reporter) -> None:
        self.jsonl, self.reporter = JsonlWriter(path), reporter

    def write(self, row: dict[str, Any]) -> None:
        self.jsonl.write(row)
        self.reporter.log(row)

    def close(self) -> None:
        self.jsonl.close()
        self.reporter.close()


def _scalars(r: dict[str, Any]) -> dict[str, Any]:
    """The numeric entries of an evaluation, for a metrics.jsonl row."""
    return {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _base_eval_cache(cfg: RunConfig, base: dict[str, Any]) -> Path | None:
    """The yardstick of the untouched embedded base is the same for every cell of that base
    (the sampled evaluation has its own seed); it is cached in the local cache, keyed by the
    base's checksum and everything else that determines it, the evaluation code included."""
    if cfg.model.name != "tiny" or cfg.run.device != "cpu":
        return None
    backend_mod = sys.modules[BACKENDS.get(cfg.rollout.backend).__module__]
    code = "".join(inspect.getsource(m) for m in (evaluation, backend_mod))
    key = json.dumps([base["sha256"], cfg.task.name, cfg.task.params,
                      TASKS.get(cfg.task.name).version, dataclasses.asdict(cfg.eval),
                      cfg.rollout.backend, cfg.rollout.params, cfg.rollout.temperature,
                      cfg.rollout.top_p, cfg.rollout.max_new_tokens, cfg.run.dtype,
                      {n: TASKS.get(n).version for n in cfg.eval.transfer},
                      hashlib.sha256(code.encode()).hexdigest()],
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "base_evals" / f"{digest}.json"


def _slices(B: int, micro: int, group: int = 1) -> list[slice]:
    """Micro-batches of `micro` sequences (0: one), rounded up to whole groups so that each
    prompt's completions stay together (its prompt is then encoded once)."""
    step = micro or B
    if step % group:
        step += group - step % group
    return [slice(i, min(i + step, B)) for i in range(0, B, step)]


def _rl_step(cfg, step, examples, task, tok, policy, reference, initial, backend, algo, div,
             beta, opt, sched, device, measure_grads=False):
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
    parts = _slices(B, cfg.optim.micro_batch_size, G)
    n_tokens = float(mask.sum())

    t1 = time.time()
    adv_B = algo.advantages(rewards_B, group_ids_B).detach()

    def logprobs(model, s: slice):
        return sequence_logprobs(model, prompt_ids[s], prompt_mask[s], comp_ids[s], mask[s],
                                 R.temperature, group=G)

    def _ref_logits(s: slice) -> torch.Tensor:
        with torch.no_grad():
            return logprobs(reference, s)[1]

    with torch.no_grad():
        logp_ref = torch.cat([logprobs(reference, s)[0] for s in parts])
        # KL(pi || pi_0) of this batch (k3 estimate on the sampled tokens, before the update):
        # free while the reference is pi_0; one more forward only when a KL budget needs it
        if initial is reference or beta.adaptive:
            logp_init = logp_ref if initial is reference else torch.cat(
                [logprobs(initial, s)[0] for s in parts])
        else:
            logp_init = None
    policy.train()
    coef = beta.beta
    extra: dict[str, float] = {}
    if measure_grads:
        extra["reg_pg_grad_ratio"] = _grad_ratio(cfg, policy, logprobs, parts[0], logp_ref,
                                                 mask, rewards_B, group_ids_B, adv_B, algo, div,
                                                 coef, _ref_logits)
    # The behaviour policy's log-probs are the first update's own forward, detached: the
    # policy has not moved yet, so no separate no-grad forward pass is needed for them.
    logp_old = torch.zeros_like(logp_ref)
    pg_BT, D_BT = torch.zeros_like(logp_ref), torch.zeros_like(logp_ref)
    clipped_BT = torch.zeros_like(mask)
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    pair_loss = 0.0
    for update in range(cfg.optim.updates_per_batch):
        opt.zero_grad(set_to_none=True)
        loss_total = 0.0
        for s in parts:
            logp, logits = logprobs(policy, s)
            if update == 0:
                logp_old[s] = logp.detach()
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
            if step == 1:  # a plugin that breaks the contract stops before any update
                _check_plugins(cfg, pg, D, view.mask)
            loss = aggregate(pg + coef * D, view.mask, algo.aggregation,
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
    abs_reg = _masked_mean((coef * D_BT).abs(), mask)
    if logp_init is not None:
        extra["kl_pi0"] = _masked_mean(k3(logp_init - logp_old), mask)
        beta.update(extra["kl_pi0"])
    return {
        "reward_mean": float(rewards_B.mean()),
        "reward_std": float(rewards_B.std()),
        "response_len_mean": float(lengths.mean()),
        "response_len_max": float(lengths.max()),
        "truncation_rate": float(batch.truncated.float().mean()),
        "clip_frac": _masked_mean(clipped_BT.float(), mask),
        "beta": coef,
        "divergence": _masked_mean(D_BT, mask),
        "reg_pg_ratio": abs_reg / abs_pg if abs_pg > 0 else (0.0 if abs_reg == 0 else math.inf),
        **extra,
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


def _check_plugins(cfg, pg, D, mask) -> None:
    check_plugin_output("algorithm", cfg.algorithm.name, pg, mask, "surrogate")
    check_plugin_output("divergence", cfg.divergence.name, D, mask, "per_token")


GRAD_PROBE_SEQS = 16  # sequences in the gradient-norm probe (a slice of the batch)


def _grad_ratio(cfg, policy, logprobs, part, logp_ref, mask, rewards_B, group_ids_B, adv_B,
                algo, div, coef, ref_logits) -> float:
    """||grad of the penalty term|| / ||grad of the policy term|| on a slice of the batch.

    Loss *values* say little about how hard a penalty pulls (k3 at beta 1 has |reg|/|pg| under
    1% and still costs 13 points in 40 steps): the gradients are what the optimizer sees. Both
    terms are aggregated exactly as in training; measured at evaluation steps only, on at most
    GRAD_PROBE_SEQS sequences, so a training step does not double in cost."""
    s = slice(part.start, min(part.stop, part.start + GRAD_PROBE_SEQS))
    params = [p for p in policy.parameters() if p.requires_grad]
    logp, logits = logprobs(policy, s)
    view = TokenView(logp=logp, logp_old=logp.detach(), logp_ref=logp_ref[s], mask=mask[s],
                     rewards=rewards_B[s], group_ids=group_ids_B[s],
                     logits_fn=lambda: (torch.log_softmax(logits, -1),
                                        torch.log_softmax(ref_logits(s), -1)))
    pg, _ = algo.surrogate(view, adv_B[s])
    D = div.per_token(view)
    _check_plugins(cfg, pg, D, view.mask)
    max_len = cfg.rollout.max_new_tokens

    def norm(term) -> float:
        loss = aggregate(term, view.mask, algo.aggregation, max_len)
        if not loss.requires_grad:
            return 0.0
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))

    g_pg, g_reg = norm(pg), norm(coef * D)
    policy.zero_grad(set_to_none=True)
    return g_reg / g_pg if g_pg > 0 else (0.0 if g_reg == 0 else math.inf)


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


def _result(cfg, status, reason, diverged_step, base_eval, final, last_train, ratios, beta,
            out, div, task, isolation, base, device, wall, sandbox_report):
    metrics: dict[str, Any] = {}
    if base_eval is not None:
        metrics["base_accuracy"] = _metric(base_eval["accuracy"], "max")
        for k, v in _sampled(base_eval).items():
            metrics[f"base_{k}"] = _metric(v, "max")
        for name, t in base_eval.get("transfer", {}).items():
            metrics[f"base_{name}_accuracy"] = _metric(t["accuracy"], "max")
    if final is not None:
        metrics["accuracy"] = _metric(final["accuracy"], "max")
        for k, v in final.items():
            if k.startswith("accuracy_"):
                metrics[k] = _metric(v, "max")
        metrics["response_tokens_mean"] = _metric(final["response_tokens_mean"], "min")
        metrics["truncation_rate"] = _metric(final["truncation_rate"], "min")
        for k, v in _sampled(final).items():
            metrics[k] = _metric(v, "max")
        for k in DRIFT_KEYS:
            if k in final:
                metrics[k] = _metric(final[k], "none")
        for name, t in final.get("transfer", {}).items():
            metrics[f"{name}_accuracy"] = _metric(t["accuracy"], "max")
            b = (base_eval or {}).get("transfer", {}).get(name)
            if b is not None:  # forgetting of a skill RL never rewards: lower is better
                metrics[f"{name}_drop"] = _metric(b["accuracy"] - t["accuracy"], "min")
    if last_train:
        metrics["train_reward_last"] = _metric(last_train["reward_mean"], "max")
    for k, vals in ratios.items():
        finite = [r for r in vals if math.isfinite(r)]  # inf: a step with no policy signal
        if finite:
            metrics[k] = _metric(sum(finite) / len(finite), "none")
    if beta.adaptive:
        metrics["beta_final"] = _metric(beta.beta, "none")
    from gbmpo.bases import float_environment

    return {
        "schema_version": SCHEMA_VERSION,
        "cell_id": out.name,
        "grid": out.parent.name if (out.parent / "grid.json").exists() else None,
        "task": cfg.task.name,
        "algorithm": cfg.algorithm.name,
        "divergence": cfg.divergence.name,
        "seed": cfg.run.seed,
        "base": base,
        "status": status,
        "reason": reason,
        "diverged_step": diverged_step,
        "metrics": metrics,
        "eval": {"split": cfg.eval.split, "n": len(task.split(cfg.eval.split)[: cfg.eval.n]),
                 "greedy": True, "samples": cfg.eval.samples, "seed": cfg.eval.seed,
                 "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p},
        # per-item outcomes of the final evaluation, in eval-set order, so leaderboards can
        # resample evaluation items: greedy 0/1 as a string, and correct samples out of K
        "items": None if final is None else {
            "accuracy": final["items"], "correct_of_k": final.get("correct_of_k")},
        "wall_time_s": round(wall, 2),
        "versions": {"task": type(task).version, "schema": SCHEMA_VERSION},
        "divergence_info": div.describe(),
        "provenance": provenance({"sandbox_isolation": isolation, "sandbox": sandbox_report,
                                  "device": str(device),
                                  "float_env": float_environment(),
                                  "base_sha256": base.get("sha256")}),
        "config": cfg.to_dict(),
    }


DRIFT_KEYS = ("kl_pi_pi0", "kl_pi0_pi", "kl_pi_pi0_seq", "kl_pi0_pi_seq", "entropy",
              "entropy_pi0")


def _sampled(r: dict[str, Any]) -> dict[str, float]:
    """pass@k and mean@K of an evaluation (none when eval.samples = 0)."""
    return {k: v for k, v in r.items() if k.startswith(("pass@", "mean@"))}
