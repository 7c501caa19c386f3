"""Contract checks on what a plugin hands back to the trainer.

The trainer adds `beta * divergence.per_token(view)` to `algorithm.surrogate(view, adv)[0]`
and aggregates under the mask. Broadcasting makes that sum accept many wrong shapes without a
word: a scalar, a (B,) or (T,) vector, a (B, 1) column all broadcast against (B, T), and
training then runs to the end on a wrong loss. So the trainer calls `check_plugin_output` on
both plugins' outputs on the first step, before any optimizer step, and a broken plugin stops
with a message that names it, says what was expected and what came.

Limit: the check is on the shape. A (T, B) tensor has the right shape when B == T, and shape
alone cannot tell it from (B, T); the conformance suite (tests/test_conformance.py) uses
B = 6, T = 7, so a plugin that transposes fails there.
"""

from __future__ import annotations

import torch


class PluginContractError(RuntimeError):
    """A registered plugin (algorithm, divergence, ...) broke the contract of its base class.
    The message names the plugin; nothing is wrong with the trainer or the config."""


class PluginOutputError(PluginContractError):
    """A plugin returned something other than a finite floating (B, T) tensor."""


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return str(tuple(shape))


def _shape_hint(got: tuple[int, ...], B: int, T: int) -> str:
    """Why a wrong shape is probably wrong, for the common mistakes."""
    if got == ():
        return "a scalar; return one value per token and let the trainer aggregate"
    if got == (B,):
        return ("one value per sequence; expand it over the tokens, e.g. "
                "x_B[:, None].expand_as(view.logp)")
    if got == (T,):
        return "one value per token position, not per sequence and token"
    if got == (T, B):
        return "the transpose of (B, T)"
    if len(got) == 2 and 1 in got:
        return "a broadcastable shape, not (B, T) itself; expand it with .expand_as(view.logp)"
    if len(got) == 2 and got[0] == B:
        return f"{got[1]} columns; T is the padded completion length, view.mask.shape[1]"
    if len(got) == 3 and got[:2] == (B, T):
        return "one value per vocabulary entry; reduce the last dimension"
    return "index the output like view.logp"


def check_plugin_output(kind: str, name: str, tensor: object, mask_BT: torch.Tensor,
                        what: str = "per_token") -> None:
    """Raise PluginOutputError unless `tensor` is a floating tensor of exactly mask_BT's shape
    (B, T), on mask_BT's device, finite wherever mask_BT is True.

    kind, name: the plugin's registry ('divergence', 'kl_k3'); what: the method that produced
    the tensor ('per_token' for divergences, 'surrogate' for an algorithm's per-token loss).
    Values where the mask is off are not looked at: padding may hold anything (the aggregation
    masks with `where`).
    """
    B, T = mask_BT.shape
    want = (f"{kind} {name!r}: {what}() must return a floating torch.Tensor of shape (B, T) = "
            f"{_shape((B, T))}, the shape of view.mask")
    if not isinstance(tensor, torch.Tensor):
        raise PluginOutputError(f"{want}; got {type(tensor).__name__}")
    got = tuple(tensor.shape)
    if got != (B, T):
        raise PluginOutputError(f"{want}; got shape {_shape(got)}, dtype {tensor.dtype}: "
                                f"{_shape_hint(got, B, T)}")
    if not tensor.is_floating_point():
        raise PluginOutputError(f"{want}; got shape {_shape(got)}, dtype {tensor.dtype}: not a "
                                "floating dtype (compute in view.logp's dtype)")
    if tensor.device != mask_BT.device:
        raise PluginOutputError(f"{want}, on view.mask's device {mask_BT.device}; got a tensor "
                                f"on {tensor.device}")
    bad_BT = ~torch.isfinite(tensor.detach()) & mask_BT
    if bool(bad_BT.any()):
        row, col = (int(i) for i in bad_BT.nonzero()[0])
        value = float(tensor.detach()[row, col])
        raise PluginOutputError(
            f"{kind} {name!r}: {what}() is not finite on {int(bad_BT.sum())} of "
            f"{int(mask_BT.sum())} completion tokens (where view.mask is True); first at row "
            f"{row}, column {col}: {value}")
