"""The yardstick every cell reports: pass@k, exact drift from pi_0, and the adaptive
coefficient that holds a KL budget."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from gbmpo import config as C
from gbmpo.evaluation import DriftMeter, pass_at_k, pass_ks
from gbmpo.kl_control import BetaController
from gbmpo.rollout.base import RolloutBatch
from gbmpo.trainer import train

FAST = {
    "pretrain": {"steps": 3, "batch_size": 8},
    "run": {"steps": 2},
    "eval": {"n": 6, "batch_size": 24, "samples": 4, "transfer": {"reverse": {}}},
    "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 16},
}


# ---- pass@k -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, c", [(4, 0), (4, 1), (5, 2), (6, 6), (8, 3)])
def test_pass_at_k_equals_brute_force_enumeration(n, c):
    """pass@k = P(a random k-subset of the n samples holds a correct one), by enumeration."""
    outcomes = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        want = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_ks_and_bad_arguments():
    assert pass_ks(16) == [1, 2, 4, 8, 16] and pass_ks(12) == [1, 2, 4, 8, 12]
    assert pass_ks(1) == [1]
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)


# ---- exact drift on a small categorical --------------------------------------------------------
class _Fixed(torch.nn.Module):
    """A 'model' whose next-token logits are the same fixed vector at every position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)
        self.head = torch.nn.Linear(2, len(logits))

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask, position_ids):
        B, L = input_ids.shape
        return type("Out", (), {"logits": self.logits.expand(B, L, -1).clone()})()


def test_drift_meter_equals_hand_computed_kl_and_entropy():
    p, q = [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]
    pi, pi0 = _Fixed([math.log(x) for x in p]), _Fixed([math.log(x) for x in q])
    comp_mask = torch.tensor([[True, True, True], [True, False, False]])
    batch = RolloutBatch(prompt_ids=torch.zeros(2, 2, dtype=torch.long),
                         prompt_mask=torch.ones(2, 2, dtype=torch.bool),
                         completion_ids=torch.zeros(2, 3, dtype=torch.long),
                         completion_mask=comp_mask, truncated=torch.zeros(2, dtype=torch.bool),
                         texts=["", ""], group_ids=torch.arange(2))
    meter = DriftMeter(pi, pi0, temperature=1.0, device="cpu")
    meter(batch)
    r = meter.result()
    kl = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    kl_rev = sum(b * math.log(b / a) for a, b in zip(p, q, strict=True))
    assert r["kl_pi_pi0"] == pytest.approx(kl, rel=1e-5)
    assert r["kl_pi0_pi"] == pytest.approx(kl_rev, rel=1e-5)
    assert r["entropy"] == pytest.approx(-sum(a * math.log(a) for a in p), rel=1e-5)
    assert r["entropy_pi0"] == pytest.approx(-sum(b * math.log(b) for b in q), rel=1e-5)
    # 4 tokens in 2 sequences: per-sequence totals are twice the per-token means
    assert r["kl_pi_pi0_seq"] == pytest.approx(2 * kl, rel=1e-5)
    # temperature applies to both distributions, as in training
    hot = DriftMeter(pi, pi0, temperature=2.0, device="cpu")
    hot(batch)
    ph = torch.softmax(torch.log(torch.tensor(p)) / 2, 0)
    qh = torch.softmax(torch.log(torch.tensor(q)) / 2, 0)
    assert hot.result()["kl_pi_pi0"] == pytest.approx(float((ph * (ph / qh).log()).sum()),
                                                      rel=1e-5)


# ---- the adaptive coefficient --------------------------------------------------------------
def test_beta_controller_moves_beta_toward_the_target():
    c = BetaController(0.1, target_kl=0.01, horizon=2.0)
    assert c.update(0.02) == pytest.approx(0.1 * 1.1)  # KL twice the target: error clipped
    assert c.update(0.011) == pytest.approx(0.1 * 1.1 * 1.05)  # 10% over: +5%
    down = BetaController(0.1, target_kl=0.01, horizon=4.0)
    assert down.update(0.0) == pytest.approx(0.1 * 0.95)
    fixed = BetaController(0.1)
    assert not fixed.adaptive and fixed.update(5.0) == 0.1
    with pytest.raises(ValueError, match="positive starting beta"):
        BetaController(0.0, target_kl=0.1)


def test_target_kl_is_validated():
    with pytest.raises(C.ConfigError, match="'none' has none"):
        C.load(None, ["divergence.name=none", "divergence.target_kl=0.01"])
    with pytest.raises(C.ConfigError, match="positive starting divergence.beta"):
        C.load(None, ["divergence.beta=0", "divergence.target_kl=0.01"])


# ---- a 2-step cell writes every new metric -------------------------------------------------
def _cfg(**sections):
    data = json.loads(json.dumps(FAST))
    for sec, vals in sections.items():
        data.setdefault(sec, {}).update(vals)
    return C.from_dict(data)


def test_two_step_cell_writes_the_yardstick(tmp_path):
    cfg = _cfg(divergence={"name": "kl_k1", "beta": 0.5})
    r = train(cfg, tmp_path / "cell", progress=False)
    m = {k: v["value"] for k, v in r["metrics"].items()}
    for k in ("pass@1", "pass@2", "pass@4", "mean@4", "base_pass@4", "kl_pi_pi0", "kl_pi0_pi",
              "kl_pi_pi0_seq", "kl_pi0_pi_seq", "entropy", "entropy_pi0", "reverse_accuracy",
              "base_reverse_accuracy", "reverse_drop"):
        assert k in m, k
    assert m["pass@1"] <= m["pass@2"] <= m["pass@4"]
    assert m["kl_pi_pi0"] > 0 and m["kl_pi0_pi"] > 0  # kl_k1 at beta 0.5 moves every token
    assert r["base"]["source"] == "local" and len(r["base"]["sha256"]) == 64
    assert len(r["items"]["accuracy"]) == 6 and len(r["items"]["correct_of_k"]) == 6
    assert r["provenance"]["float_env"]["cpu_capability"]
    rows = [json.loads(x) for x in (tmp_path / "cell" / "metrics.jsonl").read_text().splitlines()]
    step0 = next(x for x in rows if x["kind"] == "eval" and x["step"] == 0 and "task" not in x)
    # at step 0 the policy is pi_0: no drift, and pass@k is the base's
    assert step0["kl_pi_pi0"] == pytest.approx(0, abs=1e-7)
    assert step0["kl_pi0_pi"] == pytest.approx(0, abs=1e-7)
    assert step0["entropy"] == pytest.approx(step0["entropy_pi0"])
    assert step0["pass@4"] == m["base_pass@4"]
    train_rows = [x for x in rows if x["kind"] == "train"]
    assert all("beta" in x and "kl_pi0" in x for x in train_rows)
    assert all("reg_pg_grad_ratio" in x for x in train_rows)  # steps 1 and 2 are eval steps
    # kl_k1's gradient is non-zero at pi_0; this barely trained model earns no reward, so the
    # policy term has no gradient and the ratio is infinite (left out of the cell's mean)
    assert train_rows[0]["reg_pg_grad_ratio"] is None or train_rows[0]["reg_pg_grad_ratio"] > 0


def test_step_zero_evaluation_is_cached_per_base(tmp_path):
    a = train(_cfg(run={"steps": 0, "seed": 0}), tmp_path / "a", progress=False)
    b = train(_cfg(run={"steps": 0, "seed": 1}), tmp_path / "b", progress=False)
    assert a["metrics"]["base_pass@4"] == b["metrics"]["base_pass@4"]
    assert a["metrics"]["base_accuracy"] == b["metrics"]["base_accuracy"]


# ---- the shared-prompt forward ------------------------------------------------------------
def test_shared_prompt_forward_equals_the_full_forward_in_values_and_gradients():
    """Each prompt once, its KV cache repeated over its group: the same log-probs and
    gradients as running prompt + completion for every row (to float rounding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gbmpo.evaluation import completion_logits
    from gbmpo.models import ensure_tiny
    from gbmpo.rollout.hf import HFRollout

    path = ensure_tiny(_cfg().pretrain, progress=False)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    prompts = ["Q: Ann has 3 pens.\nA: ", "Q: a much longer prompt than that\nA: ", "Q: x\nA: "]
    b = HFRollout(model, tok).generate(prompts, n=4, max_new_tokens=12, seed=3)
    args = (b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, 0.7)

    def run(group):
        model.zero_grad()
        lg = completion_logits(model, *args, group=group)
        lp = torch.log_softmax(lg, -1).gather(-1, b.completion_ids[..., None]).squeeze(-1)
        (lp * b.completion_mask).sum().backward()
        return lp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    full, g_full = run(1)
    shared, g_shared = run(4)
    m = b.completion_mask
    assert torch.allclose(full[m], shared[m], atol=1e-5)
    assert float((g_full - g_shared).norm() / g_full.norm()) < 1e-4
    # groups whose rows hold different prompts fall back to the full forward
    from gbmpo.evaluation import _grouped

    order = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7, 8, 9, 10, 11])  # prompts 0 and 1 interleaved
    ids, pmask = b.prompt_ids[order], b.prompt_mask[order]
    assert _grouped(b.prompt_ids, b.prompt_mask, 4) and not _grouped(ids, pmask, 4)
    got = completion_logits(model, ids, pmask, b.completion_ids[order], m[order], 0.7, group=4)
    want = completion_logits(model, ids, pmask, b.completion_ids[order], m[order], 0.7)
    assert torch.equal(got, want)


def test_adaptive_beta_follows_the_batch_kl_in_a_real_cell(tmp_path):
    """The trainer feeds the controller the batch's KL(pi || pi_0) measured before each update:
    at step 1 the policy is pi_0 (KL 0, below any target: beta falls by the clipped 20% / horizon);
    once the policy has moved, a target far below the KL raises beta and one far above lowers it."""
    def betas(target):
        cfg = _cfg(run={"steps": 3}, eval={"n": 2, "samples": 0},
                   divergence={"name": "kl_k1", "beta": 0.5, "target_kl": target,
                               "kl_horizon": 2.0})
        train(cfg, tmp_path / f"t{target}", progress=False)
        rows = [json.loads(x) for x in (tmp_path / f"t{target}" / "metrics.jsonl")
                .read_text().splitlines()]
        return [(x["beta"], x["kl_pi0"]) for x in rows if x["kind"] == "train"]

    low = betas(1e-12)
    assert low[0] == (pytest.approx(0.5), pytest.approx(0.0, abs=1e-7))
    assert low[1][0] == pytest.approx(0.5 * 0.9)  # KL 0 at step 1: error clipped at -0.2
    assert low[1][1] > 1e-12 and low[2][0] == pytest.approx(0.5 * 0.9 * 1.1)
    high = betas(1e3)
    assert [b for b, _ in high] == pytest.approx([0.5, 0.45, 0.405])
