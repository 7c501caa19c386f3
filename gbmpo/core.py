"""The one data contract between the trainer and every plugin, and the one place averaging lives.

Shapes: B = sequences in the batch (P prompts x G samples), T = completion tokens (padded).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# exp() arguments are clamped here so that importance weights and k3 stay finite in float32
# even at |log ratio| = 50 (verl and TRL clamp similarly); 20 nats is a ratio of 4.9e8.
LOG_RATIO_CLAMP = 20.0


def k3(log_ratio_BT: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || q) per sampled token, exp(r) - r - 1 with
    r = log q - log pi (unbiased when tokens are drawn from pi; >= 0). Clamped, and written as
    expm1(r) - r, which is exact near r = 0 where exp(r) - r - 1 cancels catastrophically."""
    r = log_ratio_BT.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.expm1(r) - r


@dataclass(frozen=True)
class TokenView:
    """Everything a divergence or algorithm may look at, for one batch.

    logp:      (B, T) log pi_theta(y_t | y_<t) of the sampled tokens; requires grad.
    logp_old:  (B, T) behaviour policy (the one that sampled), no grad.
    logp_ref:  (B, T) reference policy, no grad.
    mask:      (B, T) bool, True on completion tokens up to and including EOS.
    rewards:   (B,)  verifier rewards.
    group_ids: (B,)  int, which prompt each sample answers (samples of a prompt share an id).
    logits_fn: optional lazy accessor for full-vocabulary (B, T, V) policy and reference
               log-probabilities, for divergences that need the whole distribution.
    """

    logp: torch.Tensor
    logp_old: torch.Tensor
    logp_ref: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    group_ids: torch.Tensor
    logits_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = field(
        default=None, repr=False
    )

    def full_logprobs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy, reference) full-vocabulary log-probs, (B, T, V) each."""
        if self.logits_fn is None:
            raise RuntimeError("this batch carries no full-vocabulary log-probs")
        return self.logits_fn()


class Aggregation(enum.Enum):
    """How per-token losses (B, T) become one scalar. Kept apart from the surrogate on purpose."""

    TOKEN_MEAN = "token-mean"  # sum over all tokens / number of tokens (DAPO)
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"  # mean over sequences of per-sequence means (GRPO)
    SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"  # mean over sequences of per-sequence sums
    CONSTANT_NORMALIZER = "constant-normalizer"  # sum / (B * max_len) (Dr. GRPO)


def masked(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Zero out padding with `where`, not multiplication: NaN * 0 is NaN, inf * 0 is NaN."""
    return torch.where(mask_BT, x_BT, torch.zeros((), dtype=x_BT.dtype, device=x_BT.device))


def aggregate(
    x_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    mode: Aggregation,
    max_len: int | None = None,
    n_tokens: float | None = None,
    n_seqs: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token tensor to a scalar under `mode`.

    max_len: the constant of CONSTANT_NORMALIZER (the completion-length cap, as in Dr. GRPO).
    n_tokens, n_seqs: the token and sequence counts of the *whole* batch when x is one
    micro-batch of it; then the micro-batch losses sum exactly to the full-batch loss.
    """
    x = masked(x_BT, mask_BT)
    n_tok_B = mask_BT.sum(dim=1)
    B = x.shape[0] if n_seqs is None else n_seqs
    if mode is Aggregation.TOKEN_MEAN:
        total = n_tok_B.sum().clamp(min=1) if n_tokens is None else max(n_tokens, 1)
        return x.sum() / total
    if mode is Aggregation.SEQ_MEAN_TOKEN_MEAN:
        return (x.sum(dim=1) / n_tok_B.clamp(min=1)).sum() / B
    if mode is Aggregation.SEQ_MEAN_TOKEN_SUM:
        return x.sum(dim=1).sum() / B
    if mode is Aggregation.CONSTANT_NORMALIZER:
        if max_len is None:
            raise ValueError("CONSTANT_NORMALIZER needs max_len (the completion-length cap)")
        return x.sum() / (B * max_len)
    raise ValueError(f"unknown aggregation {mode!r}")


def group_mean_std(
    x_B: torch.Tensor, group_ids_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and (unbiased, as torch.std) std of its group, vectorised.

    Returns tensors of shape (B,). Groups of size 1 get std 0.
    """
    _, inv = torch.unique(group_ids_B, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    x = x_B.to(torch.float64)
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=x.device)
    count = zeros.clone().index_add_(0, inv, torch.ones_like(x))
    total = zeros.clone().index_add_(0, inv, x)
    mean_G = total / count
    dev = x - mean_G[inv]
    ss_G = zeros.clone().index_add_(0, inv, dev * dev)
    std_G = torch.sqrt(ss_G / (count - 1).clamp(min=1))
    return mean_G[inv].to(x_B.dtype), std_G[inv].to(x_B.dtype)
