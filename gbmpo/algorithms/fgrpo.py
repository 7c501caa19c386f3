"""f-GRPO: a variational f-divergence loss between a group's above- and below-mean responses.

From the paper (Haldar, Mei, Lin, Xing & Song 2026, "f-GRPO and Beyond", arXiv:2602.05946,
abstract): f-GRPO is a class of on-policy RL objectives that estimate an f-divergence between
the reward-aligned and reward-unaligned distributions induced by above- and below-average
reward responses, through the variational representation of f-divergences; the paper proves an
expected reward improvement. Its exact weighting was not available to this project.

Reconstruction (this project), per group g of samples of one prompt:

    r_theta(y) = beta * sum_t [log pi(y_t) - log pi_ref(y_t)]          (masked sum over tokens)
    pi+(y) ~ pi_old(y) (R(y) - mean_g R)_+        pi-(y) ~ pi_old(y) (mean_g R - R(y))_+
    L_g = -E+[g_f(r_theta)] + E-[f*(g_f(r_theta))]          (r_theta clamped to +-20)

i.e. the negated variational lower bound on D_f(pi+ || pi-) with the critic T = g_f(r_theta)
(link and conjugate from gbmpo.fdivergences). E+/E- are advantage-weighted means over the
group's samples; for 0/1 rewards, plain means over its correct / wrong responses; the weights
are the advantages, normalised per group (see `advantages`). The loss is
the mean of L_g over groups; a group without reward spread contributes 0 (as in GRPO). Each
sequence's share is broadcast to its tokens, so seq-mean-token-mean aggregation returns exactly
that mean (as gspo.py does). Samples are treated as draws from the current policy: exact at the
first update of a batch, uncorrected (no importance weight) for updates_per_batch > 1.
`beta` = 0.1 is DPO's customary value, not the paper's.

Every g_f and f* used is increasing, so the loss raises r_theta on aligned responses and lowers
it on unaligned ones. Squared Hellinger (g = 1 - e^-v, f*(t) = t/(1-t)) gives
L_g = E+[e^-r] + E-[e^r] - 2; with beta halved, the familiar E+[e^-r/2] + E-[e^r/2] - 2.

f-HAL (`fhal`, below) adds the same estimator on off-policy preference pairs.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import torch

from gbmpo import fdivergences as fdiv
from gbmpo.algorithms.base import ALGORITHMS, Algorithm, PreferencePair
from gbmpo.core import Aggregation, TokenView, group_mean_std, masked
from gbmpo.tasks.base import read_jsonl


@ALGORITHMS.register("fgrpo")
class FGRPO(Algorithm):
    """f-GRPO: -E+[g_f(r)] + E-[f*(g_f(r))], r = beta log pi/pi_ref per sequence (2602.05946).

    f: kl | reverse_kl | pearson | hellinger | js | tv (or any gbmpo.fdivergences entry).
    beta: scale of the sequence log-ratio r_theta (reconstruction; DPO's 0.1).
    """

    aggregation = Aggregation.SEQ_MEAN_TOKEN_MEAN

    def __init__(self, f: str = "kl", beta: float = 0.1) -> None:
        if beta <= 0:
            raise ValueError(f"fgrpo: beta must be > 0, got {beta}")
        self.f = fdiv.get(f)
        self.beta = beta

    def advantages(self, rewards_B: torch.Tensor, group_ids_B: torch.Tensor) -> torch.Tensor:
        """(r - mean_g) / m_g with m_g = mean_g (r - mean_g)_+ = mean_g (mean_g - r)_+ (equal, as
        deviations sum to 0): positive parts are the weights of E+, negative parts those of E-,
        each normalised to mean 1 over the group; 0 for a group without reward spread. (For
        0/1 rewards with k of G right: G/k for a right answer, -G/(G-k) for a wrong one.)"""
        mean_B, _ = group_mean_std(rewards_B, group_ids_B)
        dev_B = rewards_B - mean_B
        m_B, _ = group_mean_std(dev_B.abs() / 2, group_ids_B)
        return torch.where(m_B > 0, dev_B / m_B.clamp(min=1e-12), torch.zeros_like(dev_B))

    def sequence_loss(self, view: TokenView, adv_B: torch.Tensor) -> torch.Tensor:
        """(B,) per-sample share of the loss; its mean over B is the mean of L_g over groups.
        Depends only on the sample and its advantage, so micro-batches can be split anywhere."""
        r_B = self.beta * masked(view.logp - view.logp_ref, view.mask).sum(dim=1)
        t_B, conj_B = fdiv.variational_terms(self.f, r_B)
        return -adv_B.clamp(min=0) * t_B + (-adv_B).clamp(min=0) * conj_B

    def surrogate(self, view: TokenView, adv_B: torch.Tensor):
        loss_B = self.sequence_loss(view, adv_B)
        return loss_B[:, None].expand(-1, view.logp.shape[1]), {}


@ALGORITHMS.register("fhal")
class FHAL(FGRPO):
    """f-HAL: (1-mix) * f-GRPO on the batch + mix * the same estimator on preference pairs.

    pairs_path: JSONL of {"prompt", "chosen", "rejected"}; empty: mine pairs from earlier
    rollouts (a verified-correct and a wrong response to the same prompt).
    """

    def __init__(self, f: str = "kl", beta: float = 0.1, mix: float = 0.5,
                 pairs_path: str = "", pairs_per_step: int = 8, buffer_size: int = 512,
                 seed: int = 0) -> None:
        """From the paper (arXiv:2602.05946, abstract): f-HAL combines on-policy reward
        optimisation with off-policy preference supervision, both read as variational
        f-divergence estimators between aligned and unaligned responses.

        Reconstruction (this project): with r = beta * sum_t log(pi/pi_ref) per sequence,
            L = (1 - mix) * L_fgrpo + mix * mean_pairs[-g_f(r_chosen) + f*(g_f(r_rejected))]
        i.e. on the pairs, chosen responses play E+ and rejected ones E-, with equal weights.
        The convex mixing and `mix` = 0.5 are this project's choice. Mined pairs are drawn
        uniformly from a FIFO buffer of the last `buffer_size` pairs of earlier steps (each
        group with a right and a wrong answer gives one pair), so they are off-policy by at
        least one update; the first step therefore has no pairs unless a file supplies them.
        """
        super().__init__(f=f, beta=beta)
        if not 0 <= mix <= 1:
            raise ValueError(f"fhal: mix must be in [0, 1], got {mix}")
        if pairs_per_step < 1 or buffer_size < 1:
            raise ValueError("fhal: pairs_per_step and buffer_size must be >= 1, got "
                             f"{pairs_per_step} and {buffer_size}")
        self.mix, self.pairs_per_step = mix, pairs_per_step
        self.rng = random.Random(seed)
        self.fixed = load_pairs(pairs_path) if pairs_path else None
        self.buffer: deque[PreferencePair] = deque(maxlen=buffer_size)

    def sequence_loss(self, view: TokenView, adv_B: torch.Tensor) -> torch.Tensor:
        return (1 - self.mix) * super().sequence_loss(view, adv_B)

    def preference_pairs(self, step: int) -> list[PreferencePair]:
        pool = self.fixed if self.fixed is not None else list(self.buffer)
        if not pool or self.mix == 0:
            return []
        return self.rng.sample(pool, min(self.pairs_per_step, len(pool)))

    def observe(self, prompts: Sequence[str], texts: Sequence[str],
                correct: Sequence[bool], group_ids: Sequence[int]) -> None:
        if self.fixed is not None:
            return
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for i, g in enumerate(group_ids):
            groups.setdefault(int(g), ([], []))[0 if correct[i] else 1].append(i)
        for right, wrong in groups.values():
            if right and wrong:
                c, r = self.rng.choice(right), self.rng.choice(wrong)
                self.buffer.append(PreferencePair(prompts[c], texts[c], texts[r]))

    def pair_loss(self, logratio_chosen_K: torch.Tensor,
                  logratio_rejected_K: torch.Tensor) -> torch.Tensor:
        t_c, _ = fdiv.variational_terms(self.f, self.beta * logratio_chosen_K)
        _, conj_r = fdiv.variational_terms(self.f, self.beta * logratio_rejected_K)
        return self.mix * (-t_c + conj_r).mean()


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """Read a JSONL pairs file; each line needs string fields prompt, chosen and rejected."""
    fields = ("prompt", "chosen", "rejected")
    if not Path(path).is_file():
        raise ValueError(f"fhal: pairs_path {str(path)!r} is not a file")
    out = []
    for n, row in enumerate(read_jsonl(path, fields, "fhal pairs"), 1):
        bad = [k for k in fields if not isinstance(row[k], str)]
        if bad:
            raise ValueError(f"fhal: pairs row {n} of {path}: not a string: {', '.join(bad)}")
        out.append(PreferencePair(row["prompt"], row["chosen"], row["rejected"]))
    if not out:
        raise ValueError(f"fhal: pairs_path {str(path)!r} holds no pairs")
    return out
