"""The algorithm contract.

An algorithm supplies (1) advantages from rewards and group ids, (2) a per-token surrogate
loss (to be minimised) from the TokenView and those advantages, and (3) its aggregation mode.
The trainer adds `beta * divergence` to the surrogate and aggregates once; it never asks which
algorithm it is running.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from gbmpo.core import LOG_RATIO_CLAMP, Aggregation, TokenView
from gbmpo.registry import Registry


@dataclass(frozen=True)
class PreferencePair:
    """An off-policy preference pair: the model input and two completions of it, `chosen`
    (e.g. a verified-correct response) and `rejected` (a wrong one), as text."""

    prompt: str
    chosen: str
    rejected: str


class Algorithm(ABC):
    """Base class; subclasses register with `@ALGORITHMS.register("name")`.

    Constructor keyword arguments are the algorithm's parameters (`[algorithm.params]`).
    `owns_regularizer = True` marks algorithms whose KL term is part of their own weight; the
    config layer then refuses a second divergence.
    """

    aggregation: ClassVar[Aggregation] = Aggregation.SEQ_MEAN_TOKEN_MEAN
    owns_regularizer: ClassVar[bool] = False

    @abstractmethod
    def advantages(self, rewards_B: torch.Tensor, group_ids_B: torch.Tensor) -> torch.Tensor:
        """(B,) advantages; no gradient."""

    @abstractmethod
    def surrogate(
        self, view: TokenView, adv_B: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-token loss (B, T) and per-token diagnostic tensors (e.g. {"clipped": bool BT})."""

    # ---- optional: off-policy preference pairs (f-HAL) ------------------------------------
    # The trainer asks for pairs before each update; if any come back it scores them with the
    # policy and the reference and adds `pair_loss` to the batch loss. Algorithms that use no
    # pairs keep these defaults and cost nothing.
    def preference_pairs(self, step: int) -> list[PreferencePair]:
        """Pairs to score in this step's loss (only from earlier steps or a file)."""
        return []

    def observe(self, prompts: Sequence[str], texts: Sequence[str],
                correct: Sequence[bool], group_ids: Sequence[int]) -> None:
        """After a batch is scored: its samples (one prompt per sample), for algorithms that
        keep some of them, e.g. to mine preference pairs for later steps."""

    def pair_loss(self, logratio_chosen_K: torch.Tensor,
                  logratio_rejected_K: torch.Tensor) -> torch.Tensor:
        """Scalar loss on K pairs from their sequence log-ratios sum_t log(pi/pi_ref)."""
        raise NotImplementedError(f"{type(self).__name__} returned pairs but has no pair_loss")


def ppo_clip_surrogate(
    logp_BT: torch.Tensor,
    logp_old_BT: torch.Tensor,
    adv_B: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-min(w A, clip(w, 1-eps_low, 1+eps_high) A) per token, w = pi/pi_old (PPO, Schulman 2017)."""
    log_w = (logp_BT - logp_old_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    w = torch.exp(log_w)
    adv = adv_B[:, None]
    unclipped = w * adv
    clipped = torch.clamp(w, 1 - eps_low, 1 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped).detach()
    return loss, {"clipped": was_clipped}


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm", "gbmpo.algorithms")
