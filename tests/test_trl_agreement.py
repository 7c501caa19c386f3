"""Where this project and TRL's GRPOTrainer overlap, their losses and gradients agree.

One fixed batch (the same prompts, completions, arith rewards and model weights) goes through
TRL's own code, GRPOTrainer._generate_and_score_completions (rewards, advantages, reference
log-probs; the completions come from a `rollout_func` instead of sampling) and compute_loss,
and through ours: TokenView from `sequence_logprobs`, then `algo.advantages`,
`algo.surrogate`, `div.per_token` and `aggregate`, as the trainer's inner loop does. Then
loss.backward() on each side and the gradients are compared parameter by parameter.

Tolerances (float32 on CPU): advantages 1e-6; log-probs, loss, gradients rtol 1e-4 with
atol 1e-6 (log-probs, loss) or 1e-6 x the largest gradient entry. TRL's log-probs come
from its fused, tiled LM head and its positions from the padded index (ours from the mask), so
the sums run in another order and agreement is to rounding, not bitwise.

The deliberate differences (docs/trl.md) are each shown: equal after matching the setting, or
different exactly where the documented rule says.

Runs in the TRL tox environment (`tox -e trl`); TRL is an optional peer, never a dependency.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is an optional peer: run `tox -e trl`")

from gbmpo import config as C  # noqa: E402
from gbmpo.algorithms import ALGORITHMS  # noqa: E402
from gbmpo.core import TokenView, aggregate  # noqa: E402
from gbmpo.divergences import DIVERGENCES  # noqa: E402
from gbmpo.models import ensure_tiny  # noqa: E402
from gbmpo.tasks import TASKS  # noqa: E402
from gbmpo.trainer import sequence_logprobs  # noqa: E402

pytestmark = pytest.mark.trl

P, G, MAX_LEN, BETA = 4, 4, 40, 0.04


# ---- the fixed batch -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch():
    """P prompts x G completions of arith, right-padded tensors plus the raw lists for TRL.

    Per prompt: the reference solution, the same with a wrong final answer, the solution with
    an extra line, and the solution repeated until cut off at MAX_LEN tokens (truncated, no
    EOS). The last group holds four correct solutions: zero reward spread."""
    from transformers import AutoTokenizer

    cfg = C.from_dict({"pretrain": {"steps": 3, "batch_size": 8}})
    path = ensure_tiny(cfg.pretrain, progress=False)
    tok = AutoTokenizer.from_pretrained(path)
    task = TASKS.get("arith")()
    examples = task.split("train")[:P]
    prompts, comps, exs = [], [], []
    for i, ex in enumerate(examples):
        ref = task.reference_completion(ex)
        wrong = ref.rsplit("#### ", 1)[0] + f"#### {int(ex.answer) + 1}"
        group = [ref, wrong, ref.replace("\n####", "\ncheck done\n####"), (ref + "\n") * 4]
        if i == P - 1:
            group = [ref] * G
        for text in group:
            prompts.append(task.build_prompt(ex, tok))
            ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
            comps.append(ids[:MAX_LEN])
            exs.append(ex)
    texts = [tok.decode([t for t in c if t != tok.eos_token_id]) for c in comps]
    rewards = torch.tensor([s.reward for s in task.score(exs, texts)])
    task.close()
    prompt_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    Lp, T = max(map(len, prompt_ids)), max(map(len, comps))
    pid = torch.full((len(prompts), Lp), tok.pad_token_id)
    pmask = torch.zeros_like(pid, dtype=torch.bool)
    cid = torch.full((len(prompts), T), tok.pad_token_id)
    cmask = torch.zeros_like(cid, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompt_ids, comps, strict=True)):
        pid[i, Lp - len(p):], pmask[i, Lp - len(p):] = torch.tensor(p), True
        cid[i, : len(c)], cmask[i, : len(c)] = torch.tensor(c), True
    b = dict(path=path, tok=tok, prompts=prompts, prompt_lists=prompt_ids, comp_lists=comps,
             texts=texts, rewards=rewards, group_ids=torch.arange(P).repeat_interleave(G),
             prompt_ids=pid, prompt_mask=pmask, comp_ids=cid, comp_mask=cmask)
    # preconditions of a batch that tests something
    assert len(set(map(len, prompt_ids))) > 1, "prompts of one length test no padding"
    assert any(c[-1] != tok.eos_token_id for c in comps), "want a truncated completion"
    assert 0 < float(rewards.sum()) < len(rewards), "want mixed rewards"
    assert float(rewards[-G:].std()) == 0, "want a zero-spread group"
    return b


def policy_weights(path):
    """The tiny model's weights moved by a fixed perturbation: the policy then differs from
    the reference (the unperturbed checkpoint) by |log ratio| ~ 0.5 per token, so the KL term
    carries a good share of the gradient (checked in the tests)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.abs().mean().clamp(min=1e-3) * torch.randn(p.shape, generator=g))
    return model


# ---- our side --------------------------------------------------------------------------------
def ours(b, algo_name, div_name, algo_params=None, logp_old=None, logp_ref=None,
         max_len=MAX_LEN):
    """Loss, advantages, reference log-probs and gradients, as the trainer's inner loop."""
    from transformers import AutoModelForCausalLM

    policy = policy_weights(b["path"]).train()
    reference = AutoModelForCausalLM.from_pretrained(b["path"]).eval()
    algo = ALGORITHMS.get(algo_name)(**(algo_params or {}))
    div = DIVERGENCES.get(div_name)()
    args = (b["prompt_ids"], b["prompt_mask"], b["comp_ids"], b["comp_mask"], 1.0)
    logp, _ = sequence_logprobs(policy, *args)
    if logp_ref is None:
        with torch.no_grad():
            logp_ref = sequence_logprobs(reference, *args)[0]
    mask = b["comp_mask"]
    view = TokenView(logp=logp, logp_old=logp.detach() if logp_old is None else logp_old,
                     logp_ref=logp_ref, mask=mask, rewards=b["rewards"],
                     group_ids=b["group_ids"])
    adv = algo.advantages(b["rewards"], b["group_ids"]).detach()
    pg, stats = algo.surrogate(view, adv)
    per_token = pg + BETA * div.per_token(view)
    loss = aggregate(per_token, mask, algo.aggregation, max_len,
                     n_tokens=float(mask.sum()), n_seqs=mask.shape[0])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    return dict(loss=loss.detach(), adv=adv, logp=logp.detach(), logp_ref=logp_ref,
                grads=grads, clipped=stats.get("clipped"))


# ---- TRL's side ------------------------------------------------------------------------------
def trl_trainer(b, tmp_path, **config):
    """A GRPOTrainer on the same weights whose rollouts are the fixed batch."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    index = {(tuple(p), tuple(c)): i for i, (p, c) in
             enumerate(zip(b["prompt_lists"], b["comp_lists"], strict=True))}
    rewards = b["rewards"].tolist()

    def rollout(prompts, trainer):  # TRL hands over the B prompt strings, in dataset order
        assert prompts == b["prompts"]
        return {"prompt_ids": b["prompt_lists"], "completion_ids": b["comp_lists"],
                "logprobs": None}

    def reward(prompts, completions, completion_ids, **kw):  # the arith score, looked up
        return [rewards[index[(tuple(p), tuple(c))]] for p, c in
                zip([b["prompt_lists"][b["prompts"].index(p)] for p in prompts],
                    completion_ids, strict=True)]

    # TRL's default is bf16 autocast, on CPU too; ours computes in float32
    config = {"max_completion_length": MAX_LEN, "bf16": False, **config}
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=P * G, num_generations=G,
        beta=BETA, temperature=1.0, epsilon=0.2,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, **config)
    trainer = GRPOTrainer(
        model=policy_weights(b["path"]), reward_funcs=reward, args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in b["prompts"]]),
        processing_class=b["tok"], rollout_func=rollout)
    trainer.current_gradient_accumulation_steps = 1  # one optimizer step of one micro-batch
    trainer.model.train()
    return trainer


def trl_loss(trainer, b, **replace):
    inputs = trainer._generate_and_score_completions([{"prompt": p} for p in b["prompts"]])
    inputs.update(replace)
    model = trainer.model
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return dict(loss=loss.detach(), adv=inputs["advantages"], inputs=inputs, grads=grads)


def assert_same(theirs, mine, mask):
    torch.testing.assert_close(theirs["adv"], mine["adv"], rtol=1e-6, atol=1e-6)
    ref = theirs["inputs"].get("ref_per_token_logps")
    if ref is not None:
        torch.testing.assert_close(ref[mask], mine["logp_ref"][mask], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(theirs["loss"], mine["loss"], rtol=1e-4, atol=1e-6)
    assert set(theirs["grads"]) == set(mine["grads"])
    scale = max(float(g.abs().max()) for g in mine["grads"].values())
    assert scale > 0
    for name, g in mine["grads"].items():
        torch.testing.assert_close(theirs["grads"][name], g, rtol=1e-4, atol=1e-6 * scale,
                                   msg=lambda m, n=name: f"gradient of {n}: {m}")


# ---- agreement -------------------------------------------------------------------------------
# TRL 1.16 multiplies k3 by the importance ratio by default (use_bias_correction_kl=True, the
# DeepSeek-V3.2 estimator); that is our kl_k3_is. Our kl_k3 is TRL with the flag off.
CASES = {  # ours (algorithm, params) : TRL's GRPOConfig for the same objective with kl_k3
    "dr_grpo": ("dr_grpo", {}, dict(loss_type="dr_grpo", scale_rewards="none",
                                    use_bias_correction_kl=False)),
    "grpo": ("grpo", {}, dict(loss_type="grpo", scale_rewards="group",
                              use_bias_correction_kl=False)),
    "dapo": ("dapo", {}, dict(loss_type="dapo", scale_rewards="group", epsilon_high=0.28,
                              use_bias_correction_kl=False)),
}


def grad_distance(a, b):
    """|a - b| / |b| over all parameters' gradients together."""
    num = sum(float((a[n] - g).norm() ** 2) for n, g in b.items())
    return (num / sum(float(g.norm() ** 2) for g in b.values())) ** 0.5


@pytest.mark.parametrize("case", list(CASES))
def test_on_policy_loss_and_gradients_equal_trl(batch, tmp_path, case):
    algo, params, config = CASES[case]
    mine = ours(batch, algo, "kl_k3", params)
    theirs = trl_loss(trl_trainer(batch, tmp_path, **config), batch)
    assert float(mine["adv"].abs().sum()) > 0
    # the KL term must matter to the gradient, or its agreement would go unnoticed
    assert grad_distance(ours(batch, algo, "none", params)["grads"], mine["grads"]) > 0.05
    assert_same(theirs, mine, batch["comp_mask"])


@pytest.fixture(scope="module")
def stale(batch):
    """Behaviour-policy log-probs a step away from the current ones (|log ratio| <= 0.5), as
    after an earlier update: the PPO clip is then active on some tokens."""
    logp = ours(batch, "grpo", "none")["logp"]
    g = torch.Generator().manual_seed(1)
    return logp + 0.5 * (2 * torch.rand(logp.shape, generator=g) - 1)


@pytest.mark.parametrize("case", ["dr_grpo", "grpo"])
def test_off_policy_clipped_loss_equals_trl(batch, tmp_path, stale, case):
    algo, params, config = CASES[case]
    mine = ours(batch, algo, "kl_k3", params, logp_old=stale)
    assert bool(mine["clipped"][batch["comp_mask"]].any()), "the clip must be engaged"
    theirs = trl_loss(trl_trainer(batch, tmp_path, **config), batch, old_per_token_logps=stale)
    assert_same(theirs, mine, batch["comp_mask"])


@pytest.mark.parametrize("off_policy", [False, True])
def test_importance_weighted_k3_is_trl_default_bias_corrected_kl(batch, tmp_path, stale,
                                                                  off_policy):
    """TRL's default KL, ratio x k3 with the gradient through the ratio (DeepSeek-V3.2), is
    our kl_k3_is (RPG section 2.2); on-policy too, where the ratio is 1 but its gradient not."""
    old = stale if off_policy else None
    config = {k: v for k, v in CASES["dr_grpo"][2].items() if k != "use_bias_correction_kl"}
    extra = {"old_per_token_logps": stale} if off_policy else {}
    theirs = trl_loss(trl_trainer(batch, tmp_path, **config), batch, **extra)
    mine = ours(batch, "dr_grpo", "kl_k3_is", logp_old=old)
    assert_same(theirs, mine, batch["comp_mask"])
    assert grad_distance(ours(batch, "dr_grpo", "kl_k3", logp_old=old)["grads"],
                         mine["grads"]) > 0.05


# ---- the deliberate differences, each shown ----------------------------------------------
def test_trl_dr_grpo_scales_rewards_by_the_group_std_unless_told_not_to(batch, tmp_path):
    """TRL's loss_type names only the aggregation; its scale_rewards default ("group") still
    divides by the group std. Our dr_grpo is the Dr. GRPO objective: no std scaling."""
    theirs = trl_loss(trl_trainer(batch, tmp_path, loss_type="dr_grpo",
                                  use_bias_correction_kl=False), batch)
    grpo_adv = ALGORITHMS.get("grpo")().advantages(batch["rewards"], batch["group_ids"])
    dr_adv = ALGORITHMS.get("dr_grpo")().advantages(batch["rewards"], batch["group_ids"])
    torch.testing.assert_close(theirs["adv"], grpo_adv, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(theirs["adv"], dr_adv, atol=1e-3)


def test_the_dr_grpo_constant_is_the_length_cap_not_the_padded_width(batch, tmp_path):
    """Both divide the token sum by B x the configured completion cap (rollout.max_new_tokens,
    TRL's max_completion_length), not by the longest completion of the batch."""
    cap = 64
    assert batch["comp_ids"].shape[1] < cap
    theirs = trl_loss(trl_trainer(batch, tmp_path, max_completion_length=cap,
                                  **CASES["dr_grpo"][2]), batch)
    assert_same(theirs, ours(batch, "dr_grpo", "kl_k3", max_len=cap), batch["comp_mask"])
    width = ours(batch, "dr_grpo", "kl_k3", max_len=batch["comp_ids"].shape[1])
    assert not torch.allclose(theirs["loss"], width["loss"], rtol=1e-3)


def test_log_ratios_beyond_20_nats_are_clamped_here_not_in_trl(batch, tmp_path):
    """Our k3 and importance weights clamp the log-ratio at +-20 (LOG_RATIO_CLAMP) so that a
    float32 loss stays finite; TRL exponentiates as is. Equal below the clamp, different above."""
    mine = ours(batch, "dr_grpo", "kl_k3")
    mask = batch["comp_mask"]
    first = (mask.cumsum(1) == 1) & mask  # each completion's first token
    for shift, equal in ((15.0, True), (30.0, False)):
        ref = torch.where(first, mine["logp"] + shift, mine["logp_ref"])
        trainer = trl_trainer(batch, tmp_path, **CASES["dr_grpo"][2])
        theirs = trl_loss(trainer, batch, ref_per_token_logps=ref)
        mine_s = ours(batch, "dr_grpo", "kl_k3", logp_ref=ref)
        close = torch.allclose(theirs["loss"], mine_s["loss"], rtol=1e-4)
        assert close == equal, (shift, float(theirs["loss"]), float(mine_s["loss"]))
        assert torch.isfinite(mine_s["loss"])


def test_trl_default_bf16_autocast_moves_log_probs_beyond_float32_rounding(batch, tmp_path):
    """TRL's bf16=True default autocasts on CPU as well; every comparison here sets bf16=False
    because our trainer computes in run.dtype (float32 by default)."""
    fp32 = trl_loss(trl_trainer(batch, tmp_path, **CASES["grpo"][2]), batch)
    bf16 = trl_loss(trl_trainer(batch, tmp_path, bf16=True, **CASES["grpo"][2]), batch)
    mask = batch["comp_mask"]
    gap = (bf16["inputs"]["ref_per_token_logps"] - fp32["inputs"]["ref_per_token_logps"])[mask]
    assert float(gap.abs().max()) > 1e-3
