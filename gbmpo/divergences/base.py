"""The divergence contract.

A divergence maps the TokenView to a per-token penalty D (B, T); the trainer adds beta * D to
the algorithm's surrogate before the one aggregation. Following GBMPO's released code, the
default entries look at the sampled token only (p = exp(logp) versus p_ref), not the vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from gbmpo.core import TokenView
from gbmpo.registry import Registry


class Divergence(ABC):
    """Base class; subclasses register with `@DIVERGENCES.register("name")`.

    Class attributes: `nonnegative` (declared D >= 0 for every input; the conformance tests hold
    it to that), `zero_at_reference` (D = 0 when policy equals reference), `penalty_free` (D is
    identically 0, so an adaptive coefficient has nothing to steer).
    Constructor keyword arguments are its parameters (`[divergence.params]`); `seed` is passed
    when the constructor accepts it, for divergences with random initialisation.
    """

    nonnegative: ClassVar[bool] = True
    zero_at_reference: ClassVar[bool] = True
    penalty_free: ClassVar[bool] = False  # D is 0 everywhere: no coefficient can bind

    @abstractmethod
    def per_token(self, view: TokenView) -> torch.Tensor:
        """Per-token penalty, shape (B, T); differentiable in view.logp."""

    def describe(self) -> dict:
        """Extra facts recorded in the result (e.g. whether parameters are convexity-safe)."""
        return {}


DIVERGENCES: Registry[type[Divergence]] = Registry("divergence", "gbmpo.divergences")
