"""KL estimators on sampled tokens (Schulman, "Approximating KL divergence", 2020) and GBMPO's
log-space L2.

With r = log p_ref - log p and tokens sampled from p: E[k1] = E[-r] = KL(p || p_ref);
E[k3] = E[e^r - r - 1] = KL(p || p_ref) as well, with lower variance and k3 >= 0.
"""

from __future__ import annotations

import torch

from gbmpo.core import LOG_RATIO_CLAMP, TokenView, k3
from gbmpo.divergences.base import DIVERGENCES, Divergence


@DIVERGENCES.register("none")
class NoDivergence(Divergence):
    """No penalty (Dr. GRPO runs in GBMPO use beta = 0)."""

    penalty_free = True

    def per_token(self, view: TokenView) -> torch.Tensor:
        return torch.zeros_like(view.logp)


@DIVERGENCES.register("kl_k1")
class KLk1(Divergence):
    """k1 = log p - log p_ref; unbiased for KL(p||p_ref) but signed and high-variance."""

    nonnegative = False

    def per_token(self, view: TokenView) -> torch.Tensor:
        return view.logp - view.logp_ref


@DIVERGENCES.register("kl_k2")
class KLk2(Divergence):
    """k2 = 1/2 (log p - log p_ref)^2; biased, low variance; second-order KL."""

    def per_token(self, view: TokenView) -> torch.Tensor:
        return 0.5 * (view.logp - view.logp_ref) ** 2


@DIVERGENCES.register("kl_k3")
class KLk3(Divergence):
    """k3 = exp(r) - r - 1, r = log p_ref - log p; the GRPO default (TRL, verl low_var_kl)."""

    def per_token(self, view: TokenView) -> torch.Tensor:
        return k3(view.logp_ref - view.logp)


@DIVERGENCES.register("kl_k3_is")
class KLk3IS(Divergence):
    """w * k3 with w = p / p_old; the off-policy-corrected k3 of RPG section 2.2 (2505.17508).

    The gradient flows through both w and k3, so that E_{pi_old}[w k3] is differentiated as
    the KL of the current policy (GRPO's k3 alone misses the weight once updates go off-policy).
    """

    def per_token(self, view: TokenView) -> torch.Tensor:
        log_w = (view.logp - view.logp_old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return torch.exp(log_w) * k3(view.logp_ref - view.logp)


@DIVERGENCES.register("l2")
class LogL2(Divergence):
    """(log p - log p_ref)^2: GBMPO's L2 in log space (twice k2)."""

    def per_token(self, view: TokenView) -> torch.Tensor:
        return (view.logp - view.logp_ref) ** 2
