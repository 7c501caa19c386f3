"""Contract tests run against every registered algorithm and divergence.

A new entry is picked up by the parametrisation from the registry: adding a file with one
decorator is enough to be tested here. A plugin file that fails to import (or reuses a name)
fails its own `test_plugin_module_loads[...]` and leaves every other entry's tests running.
Failures name the plugin and the offending values; a class flag that switches a check off
(`nonnegative = False`, `zero_at_reference = False`) shows as a skip with its reason.
"""

import inspect

import pytest
import torch

from gbmpo.algorithms import ALGORITHMS
from gbmpo.checks import PluginOutputError, check_plugin_output
from gbmpo.core import Aggregation, TokenView, aggregate
from gbmpo.divergences import DIVERGENCES
from gbmpo.registry import first_doc_line

B, T = 6, 7  # B != T, so a plugin that transposes its output fails the shape check
DIVS = DIVERGENCES.names()
ALGOS = ALGORITHMS.names()
MODULES = [(reg, mod) for reg in (ALGORITHMS, DIVERGENCES) for mod in reg.plugin_modules()]


def make_view(logp=None, logp_ref=None, logp_old=None, mask=None, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    if logp is None:
        logp = -torch.rand(B, T, generator=g) * 3
    if logp_ref is None:
        logp_ref = -torch.rand(B, T, generator=g) * 3
    if logp_old is None:
        logp_old = logp + 0.1 * torch.randn(B, T, generator=g)
    if mask is None:
        lengths = torch.tensor([7, 3, 5, 1, 7, 4])
        mask = torch.arange(T)[None, :] < lengths[:, None]
    logp = logp.clone().requires_grad_(requires_grad)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    return TokenView(logp, logp_old, logp_ref, mask, rewards, group_ids)


def build(registry, name, tmp_path):
    cls = registry.get(name)
    kw = {"seed": 0} if "seed" in inspect.signature(cls).parameters else {}
    if hasattr(cls, "example_params"):  # plugins that need a file (e.g. an ES artifact)
        kw.update(cls.example_params(tmp_path))
    return cls(**kw)


def fail(message: str) -> None:
    """Fail with just `message` (it names the plugin and the values), not a tensor repr."""
    pytest.fail(message, pytrace=False)


def fail_div(name: str, message: str) -> None:
    fail(f"divergence {name!r}: {message}")


def fail_algo(name: str, message: str) -> None:
    fail(f"algorithm {name!r}: {message}")


def at(x_BT: torch.Tensor, flat_index: int) -> str:
    """'row r, column c' of a flat index into a (B, T) tensor."""
    r, c = divmod(int(flat_index), x_BT.shape[1])
    return f"row {r}, column {c}"


def first_non_finite(x_BT: torch.Tensor) -> str:
    i = int((~torch.isfinite(x_BT)).flatten().nonzero()[0])
    return f"{at(x_BT, i)} (value {float(x_BT.flatten()[i])})"


def checked(kind: str, name: str, x_BT, mask_BT, what: str):
    """The trainer's first-step check (shape, dtype, finite where the mask is on)."""
    try:
        check_plugin_output(kind, name, x_BT, mask_BT, what)
        problem = None
    except PluginOutputError as e:
        problem = str(e)
    if problem:
        fail(problem)
    return x_BT


def per_token(div, name, view) -> torch.Tensor:
    return checked("divergence", name, div.per_token(view), view.mask, "per_token")


def skip_unless(registry, name, flag: str) -> None:
    """Skip when the plugin's class switches `flag` off, giving the class's own reason."""
    cls = registry.get(name)
    if not getattr(cls, flag):
        pytest.skip(f"{registry.kind} {name!r}: {cls.__name__}.{flag} = False switches this "
                    f"check off ({first_doc_line(cls)})")


# ---- loading -----------------------------------------------------------------------------
@pytest.mark.parametrize("registry, module", MODULES, ids=[m for _, m in MODULES])
def test_plugin_module_loads(registry, module):
    """Every plugin file imports, and registers no name that another file registers."""
    problems = [p.message for p in registry.problems() if p.module == module]
    if problems:
        fail("\n".join(problems))


# ---- divergences -------------------------------------------------------------------------
@pytest.mark.parametrize("name", DIVS)
def test_divergence_shape_and_grad(name, tmp_path):
    view = make_view()
    d = per_token(build(DIVERGENCES, name, tmp_path), name, view)
    if d.requires_grad:  # `none` returns a constant
        aggregate(d, view.mask, Aggregation.TOKEN_MEAN).backward()
        g = view.logp.grad
        if not torch.isfinite(g).all():
            fail_div(name, f"gradient of per_token w.r.t. view.logp is not finite at "
                           f"{first_non_finite(g)}")


@pytest.mark.parametrize("name", DIVS)
def test_divergence_zero_at_reference(name, tmp_path):
    skip_unless(DIVERGENCES, name, "zero_at_reference")
    div = build(DIVERGENCES, name, tmp_path)
    logp = -torch.rand(B, T) * 3
    view = make_view(logp=logp, logp_ref=logp.clone(), logp_old=logp.clone())
    d = per_token(div, name, view).detach()
    if not torch.allclose(d, torch.zeros(B, T), atol=1e-6):
        worst = int(d.abs().flatten().argmax())
        fail_div(name, f"per_token must be 0 where policy == reference (zero_at_reference = "
                       f"True); max |D| = {float(d.abs().max()):.4g} at {at(d, worst)}. Set "
                       f"zero_at_reference = False on the class if that is by design")


@pytest.mark.parametrize("name", DIVS)
def test_divergence_nonnegative_where_declared(name, tmp_path):
    skip_unless(DIVERGENCES, name, "nonnegative")
    div = build(DIVERGENCES, name, tmp_path)
    for seed in range(5):
        view = make_view(seed=seed)
        d_on = torch.where(view.mask, per_token(div, name, view).detach(), torch.inf)
        if not (d_on >= -1e-7).all():
            worst = at(d_on, int(d_on.flatten().argmin()))
            fail_div(name, f"per_token must be >= 0 (nonnegative = True); min D = "
                           f"{float(d_on.min()):.4g} at {worst} of the view with seed {seed}. "
                           f"Set nonnegative = False on the class if D can be negative by "
                           f"design")


@pytest.mark.parametrize("name", DIVS)
@pytest.mark.parametrize("gap", [50.0, -50.0])
def test_divergence_finite_at_extreme_log_ratio(name, gap, tmp_path):
    hi, lo = torch.full((B, T), -0.01), torch.full((B, T), -0.01 - abs(gap))
    logp, logp_ref = (hi, lo) if gap > 0 else (lo, hi)
    for old in ("logp_ref", "logp"):
        logp_old = (logp_ref if old == "logp_ref" else logp).clone()
        view = make_view(logp=logp, logp_ref=logp_ref, logp_old=logp_old)
        d = build(DIVERGENCES, name, tmp_path).per_token(view)
        where = f"log p - log p_ref = {gap:g}, logp_old = {old}"
        if not isinstance(d, torch.Tensor) or tuple(d.shape) != (B, T):
            checked("divergence", name, d, view.mask, "per_token")  # names the wrong shape
        if not torch.isfinite(d).all():
            fail_div(name, f"per_token is not finite at {where}: first at {first_non_finite(d)}")
        if d.requires_grad:
            aggregate(d, view.mask, Aggregation.TOKEN_MEAN).backward()
            g = view.logp.grad
            if not torch.isfinite(g).all():
                fail_div(name, f"gradient w.r.t. view.logp is not finite at {where}: first at "
                               f"{first_non_finite(g)}")


@pytest.mark.parametrize("name", DIVS)
def test_divergence_masked_garbage_does_not_change_loss(name, tmp_path):
    clean = make_view()
    bad_ref = clean.logp_ref.clone()
    bad_old = clean.logp_old.clone()
    bad_ref[~clean.mask] = float("nan")
    bad_old[~clean.mask] = float("inf")
    dirty = make_view(logp=clean.logp.detach(), logp_ref=bad_ref, logp_old=bad_old)
    div = build(DIVERGENCES, name, tmp_path)
    for mode in Aggregation:
        a = aggregate(per_token(div, name, clean), clean.mask, mode, max_len=T)
        b = aggregate(per_token(div, name, dirty), dirty.mask, mode, max_len=T)
        if not (torch.isfinite(b) and torch.equal(a, b)):
            fail_div(name, f"NaN/inf in padding (where view.mask is False) changed the "
                           f"{mode.value} loss from {float(a):.6g} to {float(b):.6g}")
    if not div.per_token(clean).requires_grad:
        return
    aggregate(div.per_token(clean), clean.mask, Aggregation.TOKEN_MEAN).backward()
    aggregate(div.per_token(dirty), dirty.mask, Aggregation.TOKEN_MEAN).backward()
    g_clean, g_dirty = clean.logp.grad[clean.mask], dirty.logp.grad[dirty.mask]
    if not torch.equal(g_clean, g_dirty):
        diff = (g_clean - g_dirty).abs().nan_to_num(nan=float("inf")).max()
        fail_div(name, f"NaN/inf in padding changed the gradient on completion tokens by up to "
                       f"{float(diff):.4g}")


# ---- algorithms --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALGOS)
def test_algorithm_advantages_match_per_group_loop(name, tmp_path):
    algo = build(ALGORITHMS, name, tmp_path)
    g = torch.Generator().manual_seed(1)
    rewards = torch.randint(0, 2, (12,), generator=g).float() + 0.1 * torch.rand(12, generator=g)
    group_ids = torch.tensor([2, 0, 1, 0, 2, 1, 0, 1, 2, 2, 0, 1])
    adv = algo.advantages(rewards, group_ids)
    if tuple(adv.shape) != (12,):
        fail_algo(name, f"advantages() must return shape (B,) = (12,), got {tuple(adv.shape)}")
    for gid in group_ids.unique():
        sel = group_ids == gid
        alone = algo.advantages(rewards[sel], torch.zeros(int(sel.sum()), dtype=torch.long))
        if not torch.allclose(adv[sel], alone, atol=1e-6):
            fail_algo(name, f"advantages of group {int(gid)} depend on the other groups: "
                            f"{adv[sel].tolist()} in the batch, {alone.tolist()} alone")


@pytest.mark.parametrize("name", ALGOS)
def test_algorithm_surrogate_contract(name, tmp_path):
    algo = build(ALGORITHMS, name, tmp_path)
    if not isinstance(algo.aggregation, Aggregation):
        fail_algo(name, f"aggregation must be an Aggregation, got {algo.aggregation!r}")
    view = make_view()
    adv = algo.advantages(view.rewards, view.group_ids)
    loss_BT, stats = algo.surrogate(view, adv)
    checked("algorithm", name, loss_BT, view.mask, "surrogate")
    for key, v in stats.items():
        if tuple(v.shape) != (B, T):
            fail_algo(name, f"surrogate() stats[{key!r}] must have shape (B, T) = {(B, T)}, "
                            f"got {tuple(v.shape)}")
    aggregate(loss_BT, view.mask, algo.aggregation, max_len=T).backward()
    grad = view.logp.grad
    if not torch.isfinite(grad).all():
        fail_algo(name, f"gradient of the surrogate is not finite at {first_non_finite(grad)}")
    if not grad[view.mask].abs().sum() > 0:
        fail_algo(name, f"the surrogate has zero gradient w.r.t. view.logp on every completion "
                        f"token (advantages {adv.tolist()}): it does not push the policy")


@pytest.mark.parametrize("name", ALGOS)
def test_algorithm_masked_garbage_and_extreme_ratio(name, tmp_path):
    algo = build(ALGORITHMS, name, tmp_path)
    clean = make_view()
    old = clean.logp_old.clone()
    old[~clean.mask] = float("nan")
    old[0, 0] = clean.logp[0, 0].item() - 50.0  # ratio e^50 on a real token
    dirty = make_view(logp=clean.logp.detach(), logp_old=old, logp_ref=clean.logp_ref)
    adv = algo.advantages(dirty.rewards, dirty.group_ids)
    loss_BT = algo.surrogate(dirty, adv)[0]
    loss = aggregate(loss_BT, dirty.mask, algo.aggregation, max_len=T)
    where = "NaN logp_old in padding and pi/pi_old = e^50 at row 0, column 0"
    if not torch.isfinite(loss):
        fail_algo(name, f"loss {float(loss)} with {where}; per-token surrogate there: "
                        f"{float(loss_BT[0, 0]):.4g}")
    loss.backward()
    grad = dirty.logp.grad
    if not torch.isfinite(grad).all():
        fail_algo(name, f"gradient not finite with {where}: first at {first_non_finite(grad)}")


def test_grpo_family_advantages_by_formula():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    gid = torch.tensor([0, 0, 0, 1, 1, 1])
    grpo = ALGORITHMS.get("grpo")(adv_eps=1e-4)
    a = grpo.advantages(r, gid)
    m, s = 1 / 3, torch.tensor([1.0, 0.0, 0.0]).std().item() + 1e-4
    assert torch.allclose(a[:3], torch.tensor([(1 - m) / s, -m / s, -m / s]))
    assert torch.allclose(a[3:], torch.zeros(3))
    dr = ALGORITHMS.get("dr_grpo")().advantages(r, gid)
    assert torch.allclose(dr, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0]))


# ---- aggregation -------------------------------------------------------------------------
def test_aggregation_modes_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # tokens: 1, 2, 3 | 4
    assert aggregate(x, mask, Aggregation.TOKEN_MEAN).item() == pytest.approx(10 / 4)
    assert aggregate(x, mask, Aggregation.SEQ_MEAN_TOKEN_MEAN).item() == pytest.approx((2 + 4) / 2)
    assert aggregate(x, mask, Aggregation.SEQ_MEAN_TOKEN_SUM).item() == pytest.approx((6 + 4) / 2)
    assert aggregate(x, mask, Aggregation.CONSTANT_NORMALIZER, max_len=5).item() == pytest.approx(
        10 / (2 * 5))
    with pytest.raises(ValueError, match="max_len"):
        aggregate(x, mask, Aggregation.CONSTANT_NORMALIZER)


@pytest.mark.parametrize("name", ALGOS)
def test_surrogate_is_separable_across_micro_batches(name, tmp_path):
    """Gradient accumulation (optim.micro_batch_size) relies on this: the surrogate of a
    sequence depends only on that sequence and its (precomputed) advantage."""
    algo = build(ALGORITHMS, name, tmp_path)
    full = make_view(requires_grad=False)
    adv = algo.advantages(full.rewards, full.group_ids)
    whole = algo.surrogate(full, adv)[0]
    pieces = []
    for s in (slice(0, 2), slice(2, 5), slice(5, 6)):
        part = TokenView(full.logp[s], full.logp_old[s], full.logp_ref[s], full.mask[s],
                         full.rewards[s], full.group_ids[s])
        pieces.append(algo.surrogate(part, adv[s])[0])
    got = torch.where(full.mask, torch.cat(pieces), 0)
    want = torch.where(full.mask, whole, 0)
    if not torch.allclose(got, want, atol=1e-6):
        i = int((got - want).abs().flatten().argmax())
        fail_algo(name, f"the surrogate of a sequence changes when it is computed in a "
                        f"micro-batch: {float(got.flatten()[i]):.6g} in pieces vs "
                        f"{float(want.flatten()[i]):.6g} in the whole batch at {at(got, i)}")


@pytest.mark.parametrize("mode", list(Aggregation))
def test_micro_batch_losses_sum_to_full_batch_loss(mode):
    view = make_view(requires_grad=False)
    x = view.logp_ref * 3 + 1
    full = aggregate(x, view.mask, mode, max_len=T)
    n_tok = float(view.mask.sum())
    parts = sum(aggregate(x[s], view.mask[s], mode, max_len=T, n_tokens=n_tok, n_seqs=B)
                for s in (slice(0, 1), slice(1, 4), slice(4, 6)))
    assert torch.allclose(parts, full)
