"""`hf`: generation with transformers on the policy module itself, by a lean sampling loop.

The loop drives the model's own forward and KV cache (`DynamicCache`) instead of
`model.generate`. For the small models this project trains on CPU, generate's per-token
machinery (logits processors, stopping criteria, model-kwargs bookkeeping) is a large share of
a decoding step, it encodes every prompt n times, and it keeps decoding sequences that have
already ended. Here a decoding step is one forward, one softmax and one draw; each prompt is
encoded once; a sequence that ends leaves the batch, KV cache included. The semantics are
generate's: left-padded prompts, position ids from the attention mask, greedy = argmax (token
for token the same as `generate(do_sample=False)`, tested), temperature then nucleus (top-p)
sampling, padding after a sequence's EOS, and stopping when every sequence has ended.
"""

from __future__ import annotations

import inspect

import torch

from gbmpo.rollout.base import BACKENDS, RolloutBackend, RolloutBatch, completion_mask_from_ids


@BACKENDS.register("hf")
class HFRollout(RolloutBackend):
    """Batched, left-padded sampling of n completions per prompt with transformers.

    Shares the policy module, so weights are always current. Sampling log-probs are not
    returned (the trainer recomputes them with one forward pass). `batch_size`: prompts per
    sampling call (each call decodes batch_size * n sequences together); 0 = all at once.
    """

    def __init__(self, policy, tokenizer, batch_size: int = 0) -> None:
        super().__init__(policy, tokenizer)
        if batch_size < 0:
            raise ValueError(f"rollout.params.batch_size must be >= 0 (0: all prompts at once), "
                             f"got {batch_size}")
        self.batch_size = batch_size

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, greedy=False,
                 seed=None) -> RolloutBatch:
        tok = self.tokenizer
        if not greedy and temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0 for sampling, got {temperature} "
                             "(greedy decoding is the evaluation's job)")
        if not 0 < top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {top_p}")
        # A private generator: the same seed gives the same samples whatever else drew from
        # torch's global stream; without a seed, the global stream is used.
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.policy.device)
            gen.manual_seed(seed)
        step = self.batch_size or len(prompts)
        chunks = [self._generate(prompts[i : i + step], n, max_new_tokens, temperature, top_p,
                                 greedy, gen) for i in range(0, len(prompts), step)]
        pad = tok.pad_token_id
        Lp = max(c[0].shape[1] for c in chunks)
        T = max(c[1].shape[1] for c in chunks)
        prompt_ids = torch.cat([_pad_left(c[0], Lp, pad) for c in chunks])
        comp_ids = torch.cat([_pad_right(c[1], T, pad) for c in chunks])
        prompt_mask = torch.cat([_pad_left(c[2], Lp, 0) for c in chunks]).bool()
        comp_mask, truncated = completion_mask_from_ids(comp_ids, tok.eos_token_id)
        texts = []
        for ids, m in zip(comp_ids, comp_mask, strict=True):
            keep = ids[m]
            if len(keep) and keep[-1] == tok.eos_token_id:
                keep = keep[:-1]
            texts.append(tok.decode(keep.tolist(), skip_special_tokens=True))
        group_ids = torch.arange(len(prompts)).repeat_interleave(n)
        return RolloutBatch(prompt_ids, prompt_mask, comp_ids, comp_mask, truncated, texts,
                            group_ids)

    def _generate(self, prompts, n, max_new_tokens, temperature, top_p, greedy, gen):
        """(prompt ids (B*n, Lp), completions (B*n, T), prompt mask (B*n, Lp)) on the CPU."""
        tok, model = self.tokenizer, self.policy
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
        was_training = model.training
        model.eval()
        try:
            comp = sample(model, ids, mask, max_new_tokens, eos_id=tok.eos_token_id,
                          pad_id=tok.pad_token_id, n=1 if greedy else n,
                          temperature=temperature, top_p=top_p, greedy=greedy, generator=gen)
        finally:
            model.train(was_training)
        # greedy samples of a prompt are identical: decode once, replicate
        reps = n if greedy else 1
        comp = comp.cpu().repeat_interleave(reps, 0)
        if comp.shape[1] == 0:
            comp = torch.full((comp.shape[0], 1), tok.pad_token_id, dtype=torch.long)
        return ids.cpu().repeat_interleave(n, 0), comp, mask.cpu().repeat_interleave(n, 0)


@torch.inference_mode()
def sample(model, ids_BL: torch.Tensor, mask_BL: torch.Tensor, max_new_tokens: int, *,
           eos_id: int, pad_id: int, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
           greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Decode up to `max_new_tokens` after each left-padded prompt, n sequences per prompt.

    ids_BL, mask_BL: (B, L) prompt ids and attention mask (0 on the left padding).
    Returns (B * n, T) completion ids, prompt-major (row i continues prompt i // n), T <= cap:
    decoding stops once every row has produced `eos_id`; after its EOS a row holds `pad_id`.

    The prompts are encoded once and the KV cache is then repeated n times, instead of encoding
    each prompt n times. Rows that emit EOS are dropped from the batch and the cache, so later
    steps cost what the unfinished rows cost. Positions count only real tokens (cumsum of the
    mask), as in `generate` and in the trainer's scoring forward, so a left-padded prompt is
    seen exactly as an unpadded one. A prompt batch without padding passes no mask, again as
    `generate` does. Same inputs and generator state, same output.
    """
    B, L = ids_BL.shape
    device = ids_BL.device
    padded = not bool(mask_BL.all())
    pos_BL = (mask_BL.long().cumsum(-1) - 1).clamp(min=0)
    cache = _new_cache(model)
    last_only = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    out = model(input_ids=ids_BL, attention_mask=mask_BL if padded else None,
                position_ids=pos_BL, past_key_values=cache, use_cache=True, **last_only)
    logits_RV = out.logits[:, -1].float().repeat_interleave(n, 0)
    cache = out.past_key_values  # (B, ...) until the first decoding step needs (B * n, ...)
    R = B * n  # rows decoded together
    # the attention mask of every step is a prefix of this one (prompt mask, then ones)
    full_mask = torch.ones(R, L + max_new_tokens, dtype=mask_BL.dtype, device=device)
    full_mask[:, :L] = mask_BL.repeat_interleave(n, 0)
    pos_R1 = pos_BL[:, -1:].repeat_interleave(n, 0) + 1
    out_RT = torch.full((R, max_new_tokens), pad_id, dtype=torch.long, device=device)
    rows = torch.arange(R, device=device)  # the output row of each row still decoding
    for t in range(max_new_tokens):
        tok_R = _pick(logits_RV, greedy, temperature, top_p, generator)
        out_RT[rows, t] = tok_R
        if t + 1 == max_new_tokens:
            break
        live_R = tok_R != eos_id
        if not bool(live_R.all()):  # rows that ended leave the batch, cache included
            if not bool(live_R.any()):
                return out_RT[:, : t + 1]
            keep = live_R.nonzero().squeeze(-1)
            if t > 0 or n == 1:
                cache.batch_select_indices(keep)
            else:  # the prompts' cache is still (B, ...): expand only the rows kept
                cache.batch_select_indices(torch.div(rows[keep], n, rounding_mode="floor"))
            rows, tok_R, pos_R1 = rows[keep], tok_R[keep], pos_R1[keep]
            full_mask = full_mask[keep]
        elif t == 0 and n > 1:
            cache.batch_repeat_interleave(n)
        out = model(input_ids=tok_R[:, None], position_ids=pos_R1, past_key_values=cache,
                    attention_mask=full_mask[:, : L + t + 1] if padded else None, use_cache=True)
        cache = out.past_key_values
        pos_R1 = pos_R1 + 1
        logits_RV = out.logits[:, -1].float()
    return out_RT


def _pick(logits_RV: torch.Tensor, greedy: bool, temperature: float, top_p: float,
          generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row, (R,): argmax, or a draw from softmax(logits / T) cut to its top-p
    nucleus (the smallest set of most probable tokens whose mass reaches top_p; Holtzman et
    al. 2020, arXiv:1904.09751)."""
    if greedy:
        return logits_RV.argmax(-1)
    probs_RV = torch.softmax(logits_RV / temperature, dim=-1)
    if top_p < 1.0:
        probs_RV = nucleus(probs_RV, top_p)
    return torch.multinomial(probs_RV, 1, generator=generator).squeeze(-1)


def nucleus(probs_RV: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the top-p nucleus (unnormalised; multinomial renormalises).

    A token is kept when the mass of the tokens more probable than it is below top_p, so the
    most probable token is always kept.
    """
    sorted_RV, order_RV = probs_RV.sort(dim=-1, descending=True)
    mass_before_RV = sorted_RV.cumsum(-1) - sorted_RV
    sorted_RV = sorted_RV.masked_fill(mass_before_RV >= top_p, 0.0)
    return torch.zeros_like(probs_RV).scatter_(-1, order_RV, sorted_RV)


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _accepts(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _pad_left(x, L, pad):
    return torch.nn.functional.pad(x, (L - x.shape[1], 0), value=pad)


def _pad_right(x, L, pad):
    return torch.nn.functional.pad(x, (0, L - x.shape[1]), value=pad)
