"""The divergence coefficient per step: fixed, or adapted to hold a KL budget.

Coefficients that make two divergences comparable differ by orders of magnitude (ProbL2's
per-token value is ~1e-2 of k3's), so a comparison at "the same beta" compares nothing. With
`divergence.target_kl` > 0, beta is steered so that the training batch's KL(pi || pi_0) per token
approaches the target: the proportional controller of Ziegler et al. 2019 (1909.08593, §2.2), as
in verl's AdaptiveKLController and OpenRLHF's `--algo.kl.target`:

    e_t = clip(KL_t / target - 1, -0.2, 0.2);   beta_{t+1} = beta_t * (1 + e_t / horizon)

with the horizon counted in RL steps (verl counts samples; one of our steps is one batch), so
each step moves beta by at most 20% / horizon. KL_t is the k3 estimate (unbiased, >= 0) of
KL(pi || pi_0) on the batch's sampled tokens, measured before the step's update.
"""

from __future__ import annotations

ERROR_CLIP = 0.2


class BetaController:
    """`beta` is the coefficient for the coming step; `update(kl)` after each step."""

    def __init__(self, beta: float, target_kl: float = 0.0, horizon: float = 2.0) -> None:
        if target_kl < 0 or horizon <= 0:
            raise ValueError(f"need target_kl >= 0 and horizon > 0, got {target_kl}, {horizon}")
        if target_kl > 0 and beta <= 0:
            raise ValueError("an adaptive coefficient needs a positive starting beta")
        self.beta, self.target, self.horizon = float(beta), float(target_kl), float(horizon)

    @property
    def adaptive(self) -> bool:
        return self.target > 0

    def update(self, kl: float) -> float:
        """Move beta toward holding KL at the target; returns the new beta."""
        if self.adaptive:
            err = min(max(kl / self.target - 1.0, -ERROR_CLIP), ERROR_CLIP)
            self.beta *= 1.0 + err / self.horizon
        return self.beta
