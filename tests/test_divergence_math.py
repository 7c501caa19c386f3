"""Closed-form checks of the divergences on a small categorical distribution."""

import math

import pytest
import torch
from scipy.integrate import quad

from gbmpo.core import TokenView
from gbmpo.divergences import DIVERGENCES
from gbmpo.divergences import neural_mirror as nm

P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
P_REF = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=torch.float64)
KL = float((P * (P / P_REF).log()).sum())


def sampled_view(n=400_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = torch.multinomial(P, n, replacement=True, generator=g)
    logp, logp_ref = P.log()[tok].float()[None], P_REF.log()[tok].float()[None]
    mask = torch.ones_like(logp, dtype=torch.bool)
    return TokenView(logp, logp.clone(), logp_ref, mask, torch.zeros(1), torch.zeros(1))


@pytest.mark.parametrize("name", ["kl_k1", "kl_k3", "kl_k3_is"])
def test_monte_carlo_kl_estimators_match_closed_form(name):
    d = DIVERGENCES.get(name)().per_token(sampled_view()).double()
    se = float(d.std()) / math.sqrt(d.numel())
    assert abs(float(d.mean()) - KL) < 4 * se, (float(d.mean()), KL, se)


def test_k2_and_l2_relation():
    v = sampled_view(1000)
    k2 = DIVERGENCES.get("kl_k2")().per_token(v)
    l2 = DIVERGENCES.get("l2")().per_token(v)
    assert torch.allclose(l2, 2 * k2)


def test_probl2_formula():
    v = sampled_view(1000)
    d = DIVERGENCES.get("probl2")().per_token(v)
    assert torch.allclose(d, (v.logp.exp() - v.logp_ref.exp()) ** 2)


def test_kl_k3_is_is_weighted_k3():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 4, generator=g)
    view = TokenView(logp, logp - 0.3, logp - 0.2, torch.ones(3, 4, dtype=torch.bool),
                     torch.zeros(3), torch.zeros(3))
    k3 = DIVERGENCES.get("kl_k3")().per_token(view)
    assert torch.allclose(DIVERGENCES.get("kl_k3_is")().per_token(view), torch.exp(
        torch.tensor(0.3)) * k3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neural_mirror_equals_numerical_integral_of_h_prime(seed):
    theta = nm.random_params(seed)
    # a harder map too: large, still non-negative parameters
    if seed == 2:
        theta = nm.random_params(seed, scale=1.0)
    for y, y0 in [(0.3, 0.5), (0.9, 0.1), (1e-6, 0.7), (0.42, 0.42)]:
        d = nm.bregman(torch.tensor([y], dtype=torch.float64),
                       torch.tensor([y0], dtype=torch.float64), theta).item()
        hp0 = nm.h_prime(torch.tensor([y0], dtype=torch.float64), theta).item()
        integral, _ = quad(lambda t, c=hp0: nm.h_prime(torch.tensor([t], dtype=torch.float64),
                                                       theta).item() - c, y0, y,
                           epsabs=1e-13, epsrel=1e-11, limit=200)
        assert d == pytest.approx(integral, rel=1e-7, abs=1e-12)
        assert d >= 0


def test_neural_mirror_has_380_parameters_and_roundtrips(tmp_path):
    assert nm.N_PARAMS == 380
    theta = nm.random_params(3)
    assert ((theta >= 0) & (theta < 0.01)).all()
    path = tmp_path / "phi.json"
    nm.save_params(path, theta, {"note": "test"})
    loaded, prov = nm.load_params(path)
    assert torch.equal(loaded, theta) and prov == {"note": "test"}
    div = DIVERGENCES.get("neural_mirror")(params_path=str(path))
    assert div.describe()["convexity_safe"]


def test_neural_mirror_takes_its_parameters_inline_as_from_a_file(tmp_path):
    theta = nm.random_params(5)
    path = tmp_path / "phi.json"
    nm.save_params(path, theta)
    from_file = DIVERGENCES.get("neural_mirror")(params_path=str(path))
    inline = DIVERGENCES.get("neural_mirror")(params=theta.tolist(), source="candidates/x.json")
    assert torch.equal(inline.theta, from_file.theta)
    assert inline.describe()["params_source"] == "inline (candidates/x.json)"
    with pytest.raises(ValueError, match="380 numbers, got 3 numbers"):
        DIVERGENCES.get("neural_mirror")(params=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="380 numbers, got \\['a'"):
        DIVERGENCES.get("neural_mirror")(params=["a"] * 380)
    with pytest.raises(ValueError, match="not both"):
        DIVERGENCES.get("neural_mirror")(params=theta.tolist(), params_path=str(path))


def test_neural_mirror_flags_unsafe_parameters(tmp_path):
    theta = nm.random_params(0)
    theta[-2] = -5.0  # a: a strongly negative quadratic term makes h concave
    path = tmp_path / "bad.json"
    nm.save_params(path, theta)
    with pytest.warns(UserWarning, match="not convexity-safe"):
        div = DIVERGENCES.get("neural_mirror")(params_path=str(path))
    assert not div.describe()["convexity_safe"]


def test_neural_mirror_rejects_wrong_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"format": "other", "params": [1, 2]}')
    with pytest.raises(ValueError, match="380"):
        nm.load_params(path)
