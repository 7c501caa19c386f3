"""Held-out evaluation: the same yardstick for every cell, whatever its divergence.

- greedy accuracy (the papers' headline) with every score detail and response length;
- K sampled completions per prompt at the rollout temperature: unbiased pass@k for
  k = 1, 2, 4, ..., K (Chen et al. 2021, "Evaluating Large Language Models Trained on Code")
  and mean@K, the mean sampled accuracy;
- drift from the initial policy pi_0, teacher-forced on the policy's own sampled completions:
  exact full-vocabulary per-token KL(pi || pi_0) and KL(pi_0 || pi) and the entropies of pi and
  pi_0 (the sum over the vocabulary is exact; only the visited prefixes are sampled), averaged
  over tokens, plus per-sequence totals. sqrt(KL(pi || pi_0)) is the x axis of the frontier plot
  (Gao et al. 2210.10760); KL(pi_0 || pi) tracks forgetting (RL's Razor, 2509.04259).

Per-item outcomes are kept so leaderboards can resample evaluation items in their CIs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gbmpo.rollout.base import RolloutBackend, RolloutBatch
from gbmpo.tasks.base import Example, Task

# Floats of one (chunk, T, V) log-prob tensor in the drift computation (~256 MB in float32);
# sequences are processed in chunks that stay under it, so a 150k-token vocabulary fits.
DRIFT_CHUNK_FLOATS = 1 << 26


def evaluate(
    task: Task,
    backend: RolloutBackend,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 100,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Greedy decoding on `examples`; returns accuracy, accuracy_<detail> per score detail
    (e.g. strict and flexible for math), response_tokens_mean/max, truncation_rate, and
    `items`: the 0/1 outcome of every example, in order."""
    correct, lengths, truncated = [], [], []
    details: dict[str, list[float]] = {}
    for i in range(0, len(examples), batch_size):
        chunk = list(examples[i : i + batch_size])
        prompts = [task.build_prompt(ex, tokenizer) for ex in chunk]
        batch = backend.generate(prompts, n=1, max_new_tokens=max_new_tokens, greedy=True)
        scores = task.score(chunk, batch.texts)
        correct += [int(s.correct) for s in scores]
        for s in scores:
            for k, v in s.details.items():
                details.setdefault(k, []).append(float(v))
        lengths += batch.completion_mask.sum(dim=1).tolist()
        truncated += batch.truncated.tolist()
    out: dict[str, Any] = {
        "accuracy": float(np.mean(correct)),
        "n": len(correct),
        "response_tokens_mean": float(np.mean(lengths)),
        "response_tokens_max": float(np.max(lengths)),
        "truncation_rate": float(np.mean(truncated)),
    }
    for k, v in details.items():
        out[f"accuracy_{k}"] = float(np.mean(v))
    out["items"] = "".join(map(str, correct))
    return out


# ---- pass@k ---------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k),
    as the stable product 1 - prod_{i=n-c+1}^{n} (1 - k / i) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_ks(K: int) -> list[int]:
    """k = 1, 2, 4, ... up to K, and K itself."""
    ks = [1 << i for i in range(K.bit_length()) if 1 << i <= K]
    return ks if ks[-1] == K else ks + [K]


def evaluate_sampled(
    task: Task,
    backend: RolloutBackend,
    examples: Sequence[Example],
    samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    batch_size: int = 100,
    tokenizer: Any = None,
    on_batch: Callable[[RolloutBatch], None] | None = None,
) -> dict[str, Any]:
    """K = `samples` completions per example at the rollout temperature. Every call with the
    same seed draws the same sampling stream, so cells are compared on common random numbers.
    Returns pass@k for k in pass_ks(K), mean@K, the sampled response length and `correct_of_k`
    (per example, how many of its K samples were correct). `on_batch` sees each generated
    batch (the drift computation uses it)."""
    per_call = max(1, batch_size // samples)  # prompts per generate call: ~batch_size sequences
    counts: list[int] = []
    lengths: list[float] = []
    for j, i in enumerate(range(0, len(examples), per_call)):
        chunk = list(examples[i : i + per_call])
        prompts = [task.build_prompt(ex, tokenizer) for ex in chunk]
        batch = backend.generate(prompts, n=samples, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p,
                                 seed=seed * 1_000_003 + j)
        scores = task.score([ex for ex in chunk for _ in range(samples)], batch.texts)
        ok = np.array([s.correct for s in scores], dtype=int).reshape(len(chunk), samples)
        counts += ok.sum(axis=1).tolist()
        lengths += batch.completion_mask.sum(dim=1).tolist()
        if on_batch is not None:
            on_batch(batch)
    out: dict[str, Any] = {f"pass@{k}": float(np.mean([pass_at_k(samples, c, k)
                                                       for c in counts]))
                           for k in pass_ks(samples)}
    out[f"mean@{samples}"] = float(np.sum(counts) / (samples * len(counts)))
    out["sampled_tokens_mean"] = float(np.mean(lengths))
    out["correct_of_k"] = counts
    return out


# ---- drift from pi_0 ------------------------------------------------------------------------
def completion_logits(model, prompt_ids, prompt_mask, comp_ids, comp_mask,
                      temperature: float, group: int = 1) -> torch.Tensor:
    """(B, T, V) float32 logits / temperature that predict each completion token, with
    positions from the attention mask (as `generate` uses with left padding).

    With `group` > 1, rows come in groups of `group` completions of one prompt (rollouts are
    prompt-major): each prompt is then run once and its KV cache repeated over its group, and
    only the completions run per row. Gradients flow through the shared prompt as through
    the full forward (repeat_interleave is differentiable); the logits agree with the full
    forward to float rounding. On arith's 8 x 8 batches the prompt is ~3/4 of the tokens, so
    the policy, reference and pi_0 passes cost about a third. Rows whose prompts differ
    within a group fall back to the full forward."""
    B, T = comp_ids.shape
    if group > 1 and T > 1 and B % group == 0 and _grouped(prompt_ids, prompt_mask, group):
        return _shared_prefix_logits(model, prompt_ids, prompt_mask, comp_ids, comp_mask,
                                     temperature, group)
    ids = torch.cat([prompt_ids, comp_ids], dim=1)
    attn = torch.cat([prompt_mask, comp_mask], dim=1).long()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    Lp = prompt_ids.shape[1]
    return logits[:, Lp - 1 : -1].float() / temperature


def _grouped(prompt_ids, prompt_mask, group: int) -> bool:
    ids = prompt_ids.view(-1, group, prompt_ids.shape[1])
    mask = prompt_mask.view(-1, group, prompt_mask.shape[1])
    return bool((ids == ids[:, :1]).all()) and bool((mask == mask[:, :1]).all())


def _shared_prefix_logits(model, prompt_ids, prompt_mask, comp_ids, comp_mask, temperature,
                          group: int) -> torch.Tensor:
    """The prompt of each group once (P rows), its cache repeated to B = P x group rows, then
    completion tokens 0..T-2 on top; token 0 is predicted by the prompt's last position."""
    T = comp_ids.shape[1]
    p_attn = prompt_mask[::group].long()  # (P, Lp), left-padded
    p_pos = (p_attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids[::group], attention_mask=p_attn, position_ids=p_pos,
                use_cache=True, logits_to_keep=1)  # the LM head on the last position only
    cache = out.past_key_values
    cache.batch_repeat_interleave(group)
    first = out.logits[:, -1:].repeat_interleave(group, 0)  # (B, 1, V)
    attn = torch.cat([p_attn.repeat_interleave(group, 0), comp_mask[:, : T - 1].long()], 1)
    n_prompt = p_attn.sum(-1, keepdim=True).repeat_interleave(group, 0)  # (B, 1)
    pos = n_prompt + torch.arange(T - 1, device=comp_ids.device)[None, :]
    rest = model(input_ids=comp_ids[:, : T - 1], attention_mask=attn, position_ids=pos,
                 past_key_values=cache, use_cache=True).logits  # (B, T - 1, V)
    return torch.cat([first, rest], dim=1).float() / temperature


class DriftMeter:
    """Accumulates exact per-token KL(pi || pi_0), KL(pi_0 || pi), H(pi) and H(pi_0) over the
    completion tokens of sampled batches; `result()` gives token means and sequence totals."""

    def __init__(self, policy, initial, temperature: float, device) -> None:
        self.policy, self.initial = policy, initial
        self.temperature, self.device = temperature, device
        self.sums = dict.fromkeys(("kl", "kl_rev", "ent", "ent0"), 0.0)
        self.tokens, self.seqs = 0, 0

    @torch.no_grad()
    def __call__(self, batch: RolloutBatch) -> None:
        B, T = batch.completion_ids.shape
        V = self.policy.get_output_embeddings().weight.shape[0]
        n_groups = int(batch.group_ids.unique().numel())
        group = B // n_groups if n_groups and B % n_groups == 0 else 1  # samples per prompt
        chunk = max(1, DRIFT_CHUNK_FLOATS // max(1, T * V))
        chunk = max(group, chunk // group * group)  # whole groups: each prompt runs once
        was_training = self.policy.training
        self.policy.eval()
        try:
            for i in range(0, B, chunk):
                s = slice(i, i + chunk)
                args = [t[s].to(self.device) for t in (batch.prompt_ids, batch.prompt_mask,
                                                       batch.completion_ids,
                                                       batch.completion_mask)]
                lp = torch.log_softmax(completion_logits(self.policy, *args, self.temperature,
                                                         group), -1)
                lq = torch.log_softmax(completion_logits(self.initial, *args, self.temperature,
                                                         group), -1)
                p, q = lp.exp(), lq.exp()
                per_tok = {"kl": (p * (lp - lq)).sum(-1), "kl_rev": (q * (lq - lp)).sum(-1),
                           "ent": -(p * lp).sum(-1), "ent0": -(q * lq).sum(-1)}
                m = args[3]
                for k, v in per_tok.items():
                    self.sums[k] += float(torch.where(m, v, 0.0).sum())
                self.tokens += int(m.sum())
                self.seqs += m.shape[0]
        finally:
            self.policy.train(was_training)

    def result(self) -> dict[str, float]:
        tok, seq = max(self.tokens, 1), max(self.seqs, 1)
        s = self.sums
        return {"kl_pi_pi0": s["kl"] / tok, "kl_pi0_pi": s["kl_rev"] / tok,
                "entropy": s["ent"] / tok, "entropy_pi0": s["ent0"] / tok,
                "kl_pi_pi0_seq": s["kl"] / seq, "kl_pi0_pi_seq": s["kl_rev"] / seq}


def yardstick(cfg, task: Task, examples: Sequence[Example], backend: RolloutBackend,
              tokenizer: Any, policy, initial, device) -> dict[str, Any]:
    """Every held-out measurement of one evaluation point: greedy, sampled (pass@k, mean@K)
    and drift from pi_0 on the sampled completions. `cfg` is the run config; eval.samples = 0
    leaves out the sampled part and the drift."""
    E, R = cfg.eval, cfg.rollout
    max_new = E.max_new_tokens or R.max_new_tokens
    out = evaluate(task, backend, examples, max_new, E.batch_size, tokenizer)
    if E.samples:
        meter = DriftMeter(policy, initial, R.temperature, device)
        out.update(evaluate_sampled(task, backend, examples, E.samples, max_new, R.temperature,
                                    R.top_p, E.seed, E.batch_size, tokenizer, on_batch=meter))
        out.update(meter.result())
    return out
