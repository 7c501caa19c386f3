"""The f-divergence table (generators, conjugates, links), the on-policy `f_*` penalties and
`fgrpo`, checked against closed forms written out independently here."""

import json
import math

import pytest
import torch

from gbmpo import fdivergences as fdiv
from gbmpo.algorithms import ALGORITHMS
from gbmpo.config import from_dict
from gbmpo.core import TokenView, aggregate
from gbmpo.divergences import DIVERGENCES
from gbmpo.registry import RegistryError
from gbmpo.trainer import train

D = torch.float64
P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=D)
Q = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=D)
F_NAMES = fdiv.FDIVERGENCES.names()


def _kl(p, q):
    return float((p * (p / q).log()).sum())


# independent closed forms of D(P || Q) for each table entry
CLOSED = {
    "kl": lambda p, q: _kl(p, q),
    "reverse_kl": lambda p, q: _kl(q, p),
    "ukl": lambda p, q: _kl(p, q) + float(q.sum() - p.sum()),
    "reverse_ukl": lambda p, q: _kl(q, p) + float(p.sum() - q.sum()),
    "pearson": lambda p, q: float(((p - q) ** 2 / q).sum()),
    "hellinger": lambda p, q: float(((p.sqrt() - q.sqrt()) ** 2).sum()),
    "js": lambda p, q: 0.5 * _kl(p, (p + q) / 2) + 0.5 * _kl(q, (p + q) / 2),
    "tv": lambda p, q: 0.5 * float((p - q).abs().sum()),
}


def test_table_is_complete_and_unknown_names_list_choices():
    assert set(F_NAMES) == set(CLOSED)
    with pytest.raises(RegistryError, match="Valid choices: .*hellinger"):
        fdiv.get("helinger")


# ---- the table --------------------------------------------------------------------------
@pytest.mark.parametrize("name", F_NAMES)
def test_fenchel_young_with_equality_at_f_prime(name):
    fd = fdiv.get(name)
    u = torch.cat([torch.logspace(-3, 3, 61, dtype=D), torch.ones(1, dtype=D)])
    t = fd.link(torch.linspace(-6, 6, 121, dtype=D))  # points of dom f*
    gap = fd.f(u)[:, None] + fd.conjugate(t)[None, :] - u[:, None] * t[None, :]
    assert (gap >= -1e-9 * (1 + (u[:, None] * t[None, :]).abs())).all()
    tp = fd.f_prime(u)
    eq = fd.f(u) + fd.conjugate(tp) - u * tp
    assert torch.allclose(eq, torch.zeros_like(eq), atol=1e-9 * (1 + float(u.max())))
    assert float(fd.f(torch.ones(1, dtype=D))) == 0.0


@pytest.mark.parametrize("name", F_NAMES)
def test_link_is_increasing_into_domain_and_reaches_the_optimal_critic(name):
    fd = fdiv.get(name)
    v = torch.linspace(-20, 20, 401, dtype=D)
    t = fd.link(v)
    lo, hi = fd.domain
    inside = (t >= lo) & (t <= hi) if fd.domain_closed else (t > lo) & (t < hi)
    assert inside.all()
    assert (t.diff() >= 0).all() and t[-1] > t[0]
    conj = fd.conjugate(t)
    assert torch.isfinite(conj).all() and (conj.diff() >= -1e-12).all()  # f* non-decreasing
    # the sup of the variational bound, T = f'(P/Q), is inside the link's range
    tp = fd.f_prime(torch.linspace(0.05, 9.0, 50, dtype=D))
    assert (tp >= t[0] - 1e-12).all() and (tp <= t[-1] + 1e-12).all()


@pytest.mark.parametrize("name", F_NAMES)
def test_closed_form_and_variational_bound_on_a_categorical(name):
    fd = fdiv.get(name)
    exact = CLOSED[name](P, Q)
    assert float(fd.closed_form(P, Q)) == pytest.approx(exact, rel=1e-12)
    t_opt = fd.f_prime(P / Q)
    assert float((P * t_opt).sum() - (Q * fd.conjugate(t_opt)).sum()) == pytest.approx(
        exact, rel=1e-9, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = fd.link(torch.randn(5, generator=g, dtype=D) * 2)
        assert float((P * t).sum() - (Q * fd.conjugate(t)).sum()) <= exact + 1e-12


# ---- on-policy penalties ----------------------------------------------------------------
F_PENALTIES = {"f_kl": "kl", "f_reverse_kl": "reverse_kl", "f_hellinger": "hellinger",
               "f_pearson": "pearson", "f_js": "js", "f_tv": "tv"}


def sampled_view(p, q, n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = torch.multinomial(p, n, replacement=True, generator=g)
    logp, logp_ref = p.log()[tok].float()[None], q.log()[tok].float()[None]
    mask = torch.ones_like(logp, dtype=torch.bool)
    return TokenView(logp, logp.clone(), logp_ref, mask, torch.zeros(1), torch.zeros(1))


@pytest.mark.parametrize("name", sorted(F_PENALTIES))
def test_monte_carlo_penalty_matches_closed_form(name):
    d = DIVERGENCES.get(name)().per_token(sampled_view(P, Q)).double()
    se = float(d.std()) / math.sqrt(d.numel())
    exact = CLOSED[F_PENALTIES[name]](P, Q)
    assert abs(float(d.mean()) - exact) < 4 * se + 1e-9, (float(d.mean()), exact, se)


@pytest.mark.parametrize("name", sorted(F_PENALTIES))
def test_declared_sign_is_a_fact(name):
    div = DIVERGENCES.get(name)()
    logp = torch.linspace(-4, -0.1, 40)[None]
    logp_ref = torch.linspace(-0.1, -4, 40)[None]  # ratios on both sides of 1
    v = TokenView(logp, logp, logp_ref, torch.ones_like(logp, dtype=torch.bool),
                  torch.zeros(1), torch.zeros(1))
    d = div.per_token(v)
    assert bool((d < 0).any()) != div.nonnegative


def test_penalty_formulas_on_tokens():
    g = torch.Generator().manual_seed(1)
    logp, logp_ref = -3 * torch.rand(3, 5, generator=g), -3 * torch.rand(3, 5, generator=g)
    v = TokenView(logp, logp, logp_ref, torch.ones(3, 5, dtype=torch.bool), torch.zeros(3),
                  torch.zeros(3))
    u = (logp - logp_ref).exp()
    expect = {"f_kl": u.log(), "f_reverse_kl": -u.log() / u, "f_pearson": (u - 1) ** 2 / u,
              "f_hellinger": (1 - u.rsqrt()) ** 2, "f_tv": 0.5 * (1 - 1 / u).abs()}
    for name, want in expect.items():
        assert torch.allclose(DIVERGENCES.get(name)().per_token(v), want, rtol=1e-5), name


# ---- fgrpo ------------------------------------------------------------------------------
def fgrpo_view(rewards, seed=0, T=4):
    B = len(rewards)
    g = torch.Generator().manual_seed(seed)
    logp = (-2 * torch.rand(B, T, generator=g)).requires_grad_(True)
    logp_ref = logp.detach() + 0.3 * torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    group_ids = torch.arange(B) // 4
    return TokenView(logp, logp.detach(), logp_ref, mask, torch.tensor(rewards), group_ids)


def _r(view, beta):
    return beta * torch.where(view.mask, view.logp - view.logp_ref, 0.0).sum(1)


def _loss(algo, view):
    adv = algo.advantages(view.rewards, view.group_ids)
    return aggregate(algo.surrogate(view, adv)[0], view.mask, algo.aggregation)


def test_fgrpo_hellinger_is_the_exponential_form():
    # groups: 2 right / 2 wrong, 1 right / 3 wrong, no spread (contributes 0)
    view = fgrpo_view([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    for beta, scale in ((0.4, 1.0), (0.2, 0.5)):  # beta halved: exp(-r/2) with r at 0.4
        r = _r(view, 0.4) * scale
        per_group = []
        for gid in range(2):
            sel = view.group_ids == gid
            pos, neg = sel & (view.rewards > 0.5), sel & (view.rewards < 0.5)
            per_group.append(torch.exp(-r[pos]).mean() + torch.exp(r[neg]).mean() - 2)
        want = (per_group[0] + per_group[1] + 0.0) / 3
        got = _loss(ALGORITHMS.get("fgrpo")(f="hellinger", beta=beta), view)
        assert torch.allclose(got, want, atol=1e-6), (beta, got, want)


@pytest.mark.parametrize("name", F_NAMES)
def test_fgrpo_is_the_advantage_weighted_variational_loss(name):
    rewards = [0.9, 0.1, 0.4, 0.6, 0.0, 0.0, 1.0, 0.3]  # continuous rewards: unequal weights
    view = fgrpo_view(rewards, seed=2)
    algo = ALGORITHMS.get("fgrpo")(f=name, beta=0.5)
    fd = fdiv.get(name)
    r = _r(view, 0.5).detach().double()
    t = fd.link(r)
    want = 0.0
    for gid in range(2):
        sel = view.group_ids == gid
        a = (view.rewards[sel] - view.rewards[sel].mean()).double()
        ap, an = a.clamp(min=0), (-a).clamp(min=0)
        want += (-(ap * t[sel]).sum() / ap.sum() + (an * fd.conjugate(t[sel])).sum() / an.sum())
    assert float(_loss(algo, view).detach()) == pytest.approx(float(want) / 2, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", F_NAMES)
def test_fgrpo_raises_above_mean_and_lowers_below_mean(name):
    view = fgrpo_view([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], seed=3)
    _loss(ALGORITHMS.get("fgrpo")(f=name, beta=0.5), view).backward()
    grad_B = torch.where(view.mask, view.logp.grad, 0.0).sum(1)
    assert (grad_B[[0, 3]] < 0).all() and (grad_B[[1, 2]] > 0).all()  # descent raises / lowers
    assert (view.logp.grad[4:] == 0).all()  # no reward spread, no push
    assert (view.logp.grad[~view.mask] == 0).all()


def test_fgrpo_advantages_weight_each_side_to_mean_one():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = ALGORITHMS.get("fgrpo")().advantages(r, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert torch.allclose(adv, torch.tensor([4.0, -4 / 3, -4 / 3, -4 / 3, 0, 0, 0, 0]))


def test_fgrpo_rejects_unknown_f():
    with pytest.raises(RegistryError, match="Valid choices"):
        ALGORITHMS.get("fgrpo")(f="chi")


# ---- end to end -------------------------------------------------------------------------
def test_fgrpo_with_an_f_penalty_trains_a_tiny_cell(tmp_path):
    cfg = from_dict({
        "pretrain": {"steps": 3, "batch_size": 8},
        "run": {"steps": 2},
        "eval": {"n": 10, "batch_size": 10},
        "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 16},
        "algorithm": {"name": "fgrpo", "params": {"f": "hellinger"}},
        "divergence": {"name": "f_js", "beta": 0.01},
    })
    result = train(cfg, tmp_path / "cell", progress=False)
    assert result["status"] == "completed", result["reason"]
    assert (result["algorithm"], result["divergence"]) == ("fgrpo", "f_js")
    rows = [json.loads(x) for x in (tmp_path / "cell" / "metrics.jsonl").read_text().split("\n")
            if x]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 2
    assert all(math.isfinite(r["loss"]) and r["divergence"] >= 0 for r in train_rows)


# ---- fhal: the same estimator on off-policy preference pairs ----------------------------
def _fhal(**kw):
    return ALGORITHMS.get("fhal")(**kw)


@pytest.mark.parametrize("name", F_NAMES)
def test_fhal_pair_loss_is_the_variational_estimator_with_chosen_as_e_plus(name):
    fd = fdiv.get(name)
    lc = torch.tensor([0.3, -1.2, 2.0], dtype=D)
    lr = torch.tensor([-0.5, 0.8, 0.0], dtype=D)
    got = _fhal(f=name, beta=0.5, mix=0.25).pair_loss(lc, lr)
    want = 0.25 * (-fd.link(0.5 * lc) + fd.conjugate(fd.link(0.5 * lr))).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-9, abs=1e-12)


def test_fhal_with_mix_zero_is_fgrpo():
    view = fgrpo_view([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], seed=4)
    a = _loss(ALGORITHMS.get("fgrpo")(f="js", beta=0.3), view)
    b = _loss(_fhal(f="js", beta=0.3, mix=0.0), view)
    c = _loss(_fhal(f="js", beta=0.3, mix=0.4), view)
    assert torch.equal(a, b) and torch.allclose(c, 0.6 * a)
    assert _fhal(mix=0.0, pairs_per_step=2).preference_pairs(1) == []


def test_fhal_mines_one_pair_per_mixed_group_for_later_steps_only():
    algo = _fhal(pairs_per_step=10, seed=0)
    assert algo.preference_pairs(1) == []  # nothing mined yet: step 1 has no pairs
    prompts = ["p0"] * 3 + ["p1"] * 3 + ["p2"] * 3
    texts = ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
    correct = [True, False, False, True, True, True, False, True, False]
    algo.observe(prompts, texts, correct, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    pairs = sorted(algo.preference_pairs(2), key=lambda p: p.prompt)
    assert [p.prompt for p in pairs] == ["p0", "p2"]  # p1 has no wrong answer
    assert pairs[0].chosen == "a0" and pairs[0].rejected in ("b0", "c0")
    assert pairs[1].chosen == "b2" and pairs[1].rejected in ("a2", "c2")
    small = _fhal(buffer_size=1)
    small.observe(prompts, texts, correct, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert [p.prompt for p in small.preference_pairs(2)] == ["p2"]  # FIFO keeps the newest


def test_fhal_pairs_file_errors_name_the_line_and_field(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "Q", "chosen": "1"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: missing field\(s\) rejected"):
        _fhal(pairs_path=str(bad))
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: not valid JSON"):
        _fhal(pairs_path=str(bad))
    bad.write_text('{"prompt": "Q", "chosen": "1", "rejected": 2}\n')
    with pytest.raises(ValueError, match=r"row 1 of .*pairs.jsonl: not a string: rejected"):
        _fhal(pairs_path=str(bad))
    with pytest.raises(ValueError, match="is not a file"):
        _fhal(pairs_path=str(tmp_path / "absent.jsonl"))
    with pytest.raises(ValueError, match="mix must be in"):
        _fhal(mix=1.5)


def test_fhal_pair_steps_widen_the_chosen_rejected_margin_on_the_tiny_model():
    from gbmpo.algorithms.base import PreferencePair
    from gbmpo.models import build_char_tokenizer, build_tiny_model
    from gbmpo.trainer import _encode_pairs, _pair_logratios

    cfg = from_dict({"pretrain": {"steps": 3, "batch_size": 8}}).pretrain
    tok = build_char_tokenizer()
    policy = build_tiny_model(cfg, len(tok), tok.eos_token_id, tok.pad_token_id)
    reference = build_tiny_model(cfg, len(tok), tok.eos_token_id, tok.pad_token_id).eval()
    pairs = [PreferencePair("Q: 2+2?\nA: ", "#### 4", "#### 5"),
             PreferencePair("Q: one more?\nA: ", "3+1=4\n#### 4", "#### 7")]
    batch = _encode_pairs(pairs, tok, torch.device("cpu"))
    assert batch[2].shape[0] == 4 and batch[3].sum(1).tolist() == [7, 13, 7, 7]  # + EOS
    algo = _fhal(f="kl", beta=1.0, mix=1.0)
    lc0, lr0 = _pair_logratios(policy, reference, batch, 1.0)
    assert torch.allclose(lc0, torch.zeros(2), atol=1e-5)  # policy == reference at the start
    opt = torch.optim.SGD(policy.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = algo.pair_loss(*_pair_logratios(policy, reference, batch, 1.0))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    lc, lr = _pair_logratios(policy, reference, batch, 1.0)
    # chosen and rejected share their '#### ' tokens, so both may rise; the margin must grow
    assert losses[0] > losses[1] > losses[2], losses
    assert ((lc - lr) > 0.3).all(), (lc, lr)


def test_fhal_trains_tiny_cells_from_a_pairs_file_and_from_mined_pairs(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"Q: Ann has {n} pens. How many pens now?"
                                           f"\nA: ", "chosen": f"#### {n}",
                                           "rejected": f"#### {n + 1}"}) for n in range(5)))
    base = {
        "pretrain": {"steps": 3, "batch_size": 8},
        "run": {"steps": 2},
        "eval": {"n": 10, "batch_size": 10},
        "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 16},
        "divergence": {"name": "none", "beta": 0.0},
    }
    for source, params in (("file", {"pairs_path": str(pairs), "pairs_per_step": 3}),
                           ("mined", {})):
        cfg = from_dict({**base, "algorithm": {"name": "fhal", "params": params}})
        result = train(cfg, tmp_path / source, progress=False)
        assert result["status"] == "completed", result["reason"]
        rows = [json.loads(x) for x in (tmp_path / source / "metrics.jsonl").read_text()
                .splitlines()]
        train_rows = [r for r in rows if r["kind"] == "train"]
        assert len(train_rows) == 2 and all(math.isfinite(r["loss"]) for r in train_rows)
        if source == "file":
            assert [r["pairs"] for r in train_rows] == [3, 3]
            assert all(r["pair_loss"] != 0 for r in train_rows)
        else:
            assert train_rows[0]["pairs"] == 0  # mined pairs come from earlier steps only
