"""RPG (arXiv:2505.17508): the fully differentiable penalties, RPG-REINFORCE's gradient
equivalence (Prop. 4.1), RPG-Style Clip, and the importance-weighted k3 — all against autograd
and closed forms on small tensors."""

import json
import math

import pytest
import torch

from gbmpo.algorithms import ALGORITHMS
from gbmpo.config import ConfigError, from_dict
from gbmpo.core import TokenView
from gbmpo.divergences import DIVERGENCES
from gbmpo.trainer import train

D = torch.float64
KLS = ["fkl", "rkl", "ufkl", "urkl"]
# the per-token forms of the RPG KL family (w = p / p_ref; RPG, fully differentiable forms),
# written out independently of gbmpo.fdivergences
FORM = {
    "fkl": lambda w: -torch.log(w),
    "rkl": lambda w: w * torch.log(w),
    "ufkl": lambda w: w - torch.log(w) - 1,
    "urkl": lambda w: w * (torch.log(w) - 1) + 1,
}
F_PRIME = {
    "fkl": lambda u: -1 / u,
    "rkl": lambda u: torch.log(u) + 1,
    "ufkl": lambda u: 1 - 1 / u,
    "urkl": lambda u: torch.log(u),
}


def _kl(p, q):
    return (p * (p / q).log()).sum()


# what each penalty's mean under samples from pi_ref is, for normalised p (= pi), q (= pi_ref)
NAMED = {"fkl": lambda p, q: _kl(q, p), "rkl": lambda p, q: _kl(p, q),
         "ufkl": lambda p, q: _kl(q, p), "urkl": lambda p, q: _kl(p, q)}


def view_of(logp, logp_old, logp_ref, adv=None):
    B, T = logp.shape
    mask = torch.ones(B, T, dtype=torch.bool)
    return TokenView(logp, logp_old, logp_ref, mask, torch.zeros(B), torch.arange(B))


def random_logps(B=3, T=5, seed=0, spread=0.6):
    g = torch.Generator().manual_seed(seed)
    logp = -2 * torch.rand(B, T, generator=g, dtype=D)
    logp_old = logp + spread * torch.randn(B, T, generator=g, dtype=D)
    logp_ref = logp + spread * torch.randn(B, T, generator=g, dtype=D)
    return logp, logp_old, logp_ref


# ---- the fully differentiable penalties -------------------------------------------------
@pytest.mark.parametrize("kl", KLS)
def test_rpg_penalty_is_the_designed_per_token_form(kl):
    logp, _, logp_ref = random_logps()
    got = DIVERGENCES.get(f"rpg_{kl}")().per_token(view_of(logp, logp, logp_ref))
    assert torch.allclose(got, FORM[kl]((logp - logp_ref).exp()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kl", KLS)
def test_rpg_penalty_estimates_its_divergence_under_reference_samples_only(kl):
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=D)
    q = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=D)
    div = DIVERGENCES.get(f"rpg_{kl}")()
    g = torch.Generator().manual_seed(0)

    def mc(sampler):
        tok = torch.multinomial(sampler, 200_000, replacement=True, generator=g)
        logp, logp_ref = p.log()[tok].float()[None], q.log()[tok].float()[None]
        d = div.per_token(view_of(logp, logp_ref, logp_ref)).double()
        return float(d.mean()), float(d.std()) / math.sqrt(d.numel())

    mean, se = mc(q)  # behaviour = reference (RPG's iterative reference)
    assert abs(mean - float(NAMED[kl](p, q))) < 4 * se
    mean, se = mc(p)  # on-policy samples: a different quantity, sum_y p f(p/q)
    off = float((p * FORM[kl](p / q)).sum())
    assert abs(mean - off) < 4 * se and abs(off - float(NAMED[kl](p, q))) > 10 * se


@pytest.mark.parametrize("kl", KLS)
def test_rpg_penalty_gradient_is_exact_when_reference_is_behaviour(kl):
    theta = torch.tensor([0.3, -0.2, 1.1, 0.0, -0.7], dtype=D, requires_grad=True)
    q = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=D)  # pi_old = pi_ref
    logp = torch.log_softmax(theta, 0)[None]
    d = DIVERGENCES.get(f"rpg_{kl}")().per_token(view_of(logp, q.log()[None], q.log()[None]))
    (grad,) = torch.autograd.grad((q * d[0]).sum(), theta)  # exact E_{pi_old}
    (want,) = torch.autograd.grad(NAMED[kl](torch.softmax(theta, 0), q), theta)
    assert torch.allclose(grad, want, atol=1e-12)


def test_declared_signs_are_facts():
    w = torch.tensor([[0.3, 0.9, 1.0, 1.5, 4.0]], dtype=D)
    for kl in KLS:
        div = DIVERGENCES.get(f"rpg_{kl}")()
        d = div.per_token(view_of(w.log(), w.log(), torch.zeros_like(w)))
        assert bool((d < 0).any()) != div.nonnegative, kl


# ---- RPG-REINFORCE -----------------------------------------------------------------------
def unclipped(kl, beta):
    return ALGORITHMS.get("rpg_reinforce")(kl=kl, beta=beta, clip_low=1 - 1e-9, clip_high=1e9,
                                           clip_c=2e9)


@pytest.mark.parametrize("kl", KLS)
@pytest.mark.parametrize("iterative", [True, False])
def test_reinforce_loss_has_the_gradient_of_the_fully_differentiable_loss(kl, iterative):
    """Prop. 4.1: -sg(A w - beta w f'(u)) log p vs -A w + beta (p_ref/p_old) f(u), per token."""
    logp, logp_old, logp_ref = random_logps(seed=1)
    if iterative:
        logp_ref = logp_old.clone()  # RPG: pi_ref = pi_old, fully differentiable form f(w)
    adv = torch.tensor([0.7, -0.4, 0.0], dtype=D)
    beta = 0.3
    x = logp.clone().requires_grad_(True)
    algo = unclipped(kl, beta)
    loss_rf, stats = algo.surrogate(view_of(x, logp_old, logp_ref), adv)
    assert not stats["clipped"].any()
    (g_rf,) = torch.autograd.grad(loss_rf.sum(), x)

    y = logp.clone().requires_grad_(True)
    w = torch.exp(y - logp_old)
    pen = DIVERGENCES.get(f"rpg_{kl}")().per_token(view_of(y, logp_old, logp_ref))
    weight_ref = torch.exp(logp_ref - logp_old)  # == 1 in the iterative case
    loss_fd = -adv[:, None] * w + beta * weight_ref * pen
    (g_fd,) = torch.autograd.grad(loss_fd.sum(), y)
    assert torch.allclose(g_rf, g_fd, atol=1e-10)


@pytest.mark.parametrize("kl", KLS)
def test_expected_gradient_is_the_gradient_of_the_regularised_objective(kl):
    """sum_y pi_old(y) grad loss(y) = grad [-E_pi R + beta D(pi || pi_ref)], all three differ."""
    theta = torch.tensor([0.3, -0.2, 1.1, 0.0, -0.7], dtype=D, requires_grad=True)
    old = torch.tensor([0.25, 0.25, 0.2, 0.2, 0.1], dtype=D)
    ref = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=D)
    reward = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0], dtype=D)
    beta = 0.2
    logp = torch.log_softmax(theta, 0)[:, None]  # 5 one-token sequences, one per outcome
    adv = reward - (old * reward).sum()  # any baseline: it cancels in expectation
    loss, _ = unclipped(kl, beta).surrogate(view_of(logp, old.log()[:, None],
                                                    ref.log()[:, None]), adv)
    (grad,) = torch.autograd.grad((old * loss[:, 0]).sum(), theta)
    pi = torch.softmax(theta, 0)
    (want,) = torch.autograd.grad(-(pi * reward).sum() + beta * NAMED[kl](pi, ref), theta)
    assert torch.allclose(grad, want, atol=1e-12)


@pytest.mark.parametrize("kl", KLS)
def test_rpg_style_clip_zero_gradient_outside_and_stated_weight_inside(kl):
    eps1, eps2, c, beta = 0.2, 0.28, 3.0, 0.5
    algo = ALGORITHMS.get("rpg_reinforce")(kl=kl, beta=beta, clip_low=eps1, clip_high=eps2,
                                           clip_c=c)
    w = torch.tensor([0.5, 0.79, 0.81, 1.0, 1.27, 1.29, 2.9, 3.1], dtype=D).repeat(2, 1)
    logp_old = torch.full_like(w, -1.5)
    logp = (logp_old + w.log()).requires_grad_(True)
    logp_ref = logp_old + torch.linspace(-0.5, 0.5, 8, dtype=D)
    adv = torch.tensor([0.6, -0.6], dtype=D)
    loss, stats = algo.surrogate(view_of(logp, logp_old, logp_ref), adv)
    (grad,) = torch.autograd.grad(loss.sum(), logp)

    inside = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0],     # A > 0: w < 1 + eps2
                           [0, 0, 1, 1, 1, 1, 1, 0]],    # A < 0: 1 - eps1 <= w < c
                          dtype=torch.bool)
    w_bar = w.clamp(1 - eps1, 1 + eps2)
    u_bar = w_bar * torch.exp(logp_old - logp_ref)
    weight = adv[:, None] * w - beta * w_bar * F_PRIME[kl](u_bar)
    assert torch.equal(stats["clipped"], ~inside)
    assert torch.equal(grad[~inside], torch.zeros_like(grad[~inside]))
    assert torch.allclose(grad[inside], -weight[inside], atol=1e-12)
    assert (grad[inside] != 0).all()


def test_parameters_are_validated_with_the_choices():
    cls = ALGORITHMS.get("rpg_reinforce")
    with pytest.raises(ValueError, match="fkl, rkl, ufkl, urkl"):
        cls(kl="k3")
    with pytest.raises(ValueError, match="clip_c"):
        cls(clip_c=1.0)
    with pytest.raises(ConfigError, match="divergence.name='none'"):
        from_dict({"algorithm": {"name": "rpg_reinforce"}, "divergence": {"name": "kl_k3"}})


# ---- kl_k3_is (RPG section 2.2) ------------------------------------------------------------
def test_kl_k3_is_is_w_times_k3_with_the_importance_weighted_kl_gradient():
    logp, logp_old, logp_ref = random_logps(seed=4)
    view = view_of(logp, logp_old, logp_ref)
    w = torch.exp(logp - logp_old)
    r = logp_ref - logp
    assert torch.allclose(DIVERGENCES.get("kl_k3_is")().per_token(view),
                          w * (torch.exp(r) - r - 1), rtol=1e-12)

    theta = torch.tensor([0.3, -0.2, 1.1, 0.0, -0.7], dtype=D, requires_grad=True)
    old = torch.tensor([0.25, 0.25, 0.2, 0.2, 0.1], dtype=D)
    ref = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=D)
    logp = torch.log_softmax(theta, 0)[None]
    v = view_of(logp, old.log()[None], ref.log()[None])
    est = (old * DIVERGENCES.get("kl_k3_is")().per_token(v)[0]).sum()  # exact E_{pi_old}
    kl = _kl(torch.softmax(theta, 0), ref)
    assert float(est.detach()) == pytest.approx(float(kl.detach()), rel=1e-12)
    (g_est,) = torch.autograd.grad(est, theta, retain_graph=True)
    (g_kl,) = torch.autograd.grad(kl, theta, retain_graph=True)
    assert torch.allclose(g_est, g_kl, atol=1e-12)
    # GRPO's unweighted k3 under the same off-policy samples has the wrong gradient
    plain = (old * DIVERGENCES.get("kl_k3")().per_token(v)[0]).sum()
    (g_plain,) = torch.autograd.grad(plain, theta)
    assert not torch.allclose(g_plain, g_kl, atol=1e-3)


# ---- end to end -------------------------------------------------------------------------
def test_rpg_reinforce_trains_a_tiny_cell_off_policy(tmp_path):
    cfg = from_dict({
        "pretrain": {"steps": 3, "batch_size": 8},
        "run": {"steps": 2},
        "eval": {"n": 10, "batch_size": 10},
        "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 16},
        "algorithm": {"name": "rpg_reinforce", "params": {"kl": "rkl", "beta": 0.1}},
        "divergence": {"name": "none", "beta": 0.0},
        "optim": {"updates_per_batch": 2},
        "reference": {"update_every": 1},
    })
    result = train(cfg, tmp_path / "cell", progress=False)
    assert result["status"] == "completed", result["reason"]
    assert result["algorithm"] == "rpg_reinforce"
    rows = [json.loads(x) for x in (tmp_path / "cell" / "metrics.jsonl").read_text().split("\n")
            if x]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 2
    assert all(math.isfinite(r["loss"]) and 0 <= r["clip_frac"] <= 1 for r in train_rows)
