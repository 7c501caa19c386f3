"""The `hf` rollout backend's sampling loop: greedy equal to transformers' `generate`, samples
from the right distribution, reproducible by seed, and the RolloutBatch contract.

The model is the embedded tiny one after a 3-step pretraining (as in test_trainer.py), with its
weights jittered by a fixed seed so that greedy completions vary between prompts and end at
different lengths; each test first checks that its inputs exercise what it claims to test.
"""

import pytest
import torch

from gbmpo import config as C
from gbmpo.models import ensure_tiny
from gbmpo.rollout import BACKENDS
from gbmpo.rollout.hf import nucleus, sample
from gbmpo.tasks import TASKS

MAX_NEW = 24


@pytest.fixture(scope="module")
def tiny(prompts_text):
    """The tiny architecture with fresh N(0, 0.1) weights (a few pretraining steps leave it
    repeating one character), and EOS given the output row of a token that greedy decoding
    emits for some prompts and not others, so that completions end at different lengths."""
    from transformers import AutoModelForCausalLM

    path, tok = prompts_text[0], prompts_text[1]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        ids, mask = encode(tok, prompts_text[2])
        rows = hf_greedy(model, tok, ids, mask, MAX_NEW)
        seen = torch.stack([torch.bincount(r, minlength=len(tok)) > 0 for r in rows]).sum(0)
        seen[seen == len(rows)] = 0
        stand_in = int(seen.argmax())
        w = model.get_output_embeddings().weight
        w[tok.eos_token_id] = w[stand_in] + 0.01 * torch.randn(w.shape[1], generator=g)
    return model, tok


@pytest.fixture(scope="module")
def prompts_text():
    from transformers import AutoTokenizer

    cfg = C.from_dict({"pretrain": {"steps": 3, "batch_size": 8}})
    path = ensure_tiny(cfg.pretrain, progress=False)
    tok = AutoTokenizer.from_pretrained(path)
    task = TASKS.get("arith")()
    try:
        return path, tok, [task.build_prompt(ex, tok) for ex in task.split("train")[:6]]
    finally:
        task.close()


@pytest.fixture(scope="module")
def prompts(prompts_text):
    return prompts_text[2]


def encode(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def hf_greedy(model, tok, ids, mask, max_new):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                         do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    return out[:, ids.shape[1]:]


def test_greedy_equals_transformers_generate(tiny, prompts):
    model, tok = tiny
    ids, mask = encode(tok, prompts)
    assert len(set(mask.sum(1).tolist())) > 1, "prompts must differ in length (left padding)"
    ref = hf_greedy(model, tok, ids, mask, MAX_NEW)
    ours = sample(model, ids, mask, MAX_NEW, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                  greedy=True)
    ended = (ref == tok.eos_token_id).any(1)
    assert 0 < int(ended.sum()) < len(prompts), "want some rows to end early and some not"
    assert len({tuple(r.tolist()) for r in ref}) >= 4, "want varied completions"
    assert torch.equal(ours, ref)


def test_greedy_equals_generate_without_padding_and_when_all_end(tiny):
    model, tok = tiny
    ids, mask = encode(tok, ["Q: 12 + 7 = ?\nA:"])
    assert bool(mask.all())
    ref = hf_greedy(model, tok, ids, mask, 200)
    ours = sample(model, ids, mask, 200, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                  greedy=True)
    assert ref.shape[1] < 200 and ref[0, -1] == tok.eos_token_id, "want an early EOS"
    assert torch.equal(ours, ref)


def test_rows_that_end_leave_the_batch_even_at_the_first_step(tiny, prompts):
    """n copies per prompt, and an end token that one prompt emits at once: rows leave the
    batch at different steps, the first one before the prompts' cache is expanded n-fold."""
    model, tok = tiny
    ids, mask = encode(tok, prompts)
    first = hf_greedy(model, tok, ids, mask, 1)[:, 0]
    end = int(first[0])
    assert bool((first != end).any())
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW,
                         do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=end)
    ref = ref[:, ids.shape[1]:]
    ours = sample(model, ids, mask, MAX_NEW, eos_id=end, pad_id=tok.pad_token_id, n=3,
                  greedy=True)
    assert torch.equal(ours, ref.repeat_interleave(3, 0))


def test_backend_greedy_batch_matches_generate_and_contract(tiny, prompts):
    model, tok = tiny
    backend = BACKENDS.get("hf")(model, tok, batch_size=4)  # two calls: 4 + 2 prompts
    batch = backend.generate(prompts, n=3, max_new_tokens=MAX_NEW, greedy=True)
    ids, mask = encode(tok, prompts)
    ref = hf_greedy(model, tok, ids, mask, MAX_NEW)
    B = len(prompts) * 3
    assert batch.group_ids.tolist() == [i // 3 for i in range(B)]
    assert batch.prompt_ids.shape[0] == batch.completion_ids.shape[0] == B
    assert torch.equal(batch.prompt_mask, batch.prompt_ids != tok.pad_token_id)
    for i in range(B):
        want = ref[i // 3]
        cut = int((want == tok.eos_token_id).int().argmax()) if (want == tok.eos_token_id).any() \
            else MAX_NEW - 1
        got = batch.completion_ids[i][batch.completion_mask[i]]
        assert torch.equal(got, want[: cut + 1])
        assert bool(batch.truncated[i]) == (not (want == tok.eos_token_id).any())
        text = tok.decode(want[: cut + 1][want[: cut + 1] != tok.eos_token_id].tolist(),
                          skip_special_tokens=True)
        assert batch.texts[i] == text
        real = batch.prompt_ids[i][batch.prompt_mask[i]]
        assert torch.equal(real, ids[i // 3][mask[i // 3].bool()])


def test_same_seed_same_samples_other_seed_other_samples(tiny, prompts):
    model, tok = tiny
    backend = BACKENDS.get("hf")(model, tok)
    a = backend.generate(prompts[:3], n=4, max_new_tokens=MAX_NEW, seed=7)
    torch.manual_seed(123)  # the global stream must not matter
    b = backend.generate(prompts[:3], n=4, max_new_tokens=MAX_NEW, seed=7)
    c = backend.generate(prompts[:3], n=4, max_new_tokens=MAX_NEW, seed=8)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert len(set(a.texts[:4])) > 1, "samples of one prompt should differ"


def _freq_close(counts_V: torch.Tensor, probs_V: torch.Tensor) -> None:
    """Every token's empirical frequency within 5 standard errors (+1 count) of its
    probability; deterministic under a fixed seed, and a wrong distribution fails it."""
    N = int(counts_V.sum())
    f = counts_V.double() / N
    p = probs_V.double()
    tol = 5 * torch.sqrt(p * (1 - p) / N) + 1.0 / N
    worst = int(((f - p).abs() / tol).argmax())
    assert bool(((f - p).abs() <= tol).all()), (
        f"token {worst}: frequency {f[worst]:.4f} vs probability {p[worst]:.4f}")


def _logits(model, tok, text):
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1].double()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_first_token_frequencies_follow_softmax(tiny, temperature):
    model, tok = tiny
    prefix = "Q: 4 + 9 = ?\nA:"
    probs = torch.softmax(_logits(model, tok, prefix) / temperature, -1)
    assert float(probs.max()) < 0.6 and int((probs > 0.02).sum()) >= 5, "want a spread"
    ids, mask = encode(tok, [prefix])
    out = sample(model, ids, mask, 1, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                 n=20_000, temperature=temperature, generator=torch.Generator().manual_seed(0))
    _freq_close(torch.bincount(out[:, 0], minlength=probs.numel()), probs)


def test_second_token_follows_softmax_through_the_kv_cache(tiny):
    """The second token, given the first, must follow softmax of a fresh full forward: this
    checks the cache, its n-fold repetition and the positions of a left-padded prompt."""
    model, tok = tiny
    prefix = "Q: 4 + 9 = ?\nA:"
    ids, mask = encode(tok, [prefix, "Q: 123 + 456 + 7 = ?\nA:"])  # prefix is left-padded
    out = sample(model, ids, mask, 2, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                 n=8_000, generator=torch.Generator().manual_seed(1))[:8_000]
    first = torch.bincount(out[:, 0]).argmax()
    rows = out[out[:, 0] == first]
    assert len(rows) > 500 and first != tok.eos_token_id
    probs = torch.softmax(_logits(model, tok, prefix + tok.decode([int(first)])), -1)
    _freq_close(torch.bincount(rows[:, 1], minlength=probs.numel()), probs)


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    p = torch.tensor([[0.0625, 0.5, 0.1875, 0.25]])  # exact in binary
    assert nucleus(p, 0.75).tolist() == [[0.0, 0.5, 0.0, 0.25]]
    assert nucleus(p, 0.76).tolist() == [[0.0, 0.5, 0.1875, 0.25]]
    assert nucleus(p, 0.4).tolist() == [[0.0, 0.5, 0.0, 0.0]]  # the top token always stays
    assert torch.equal(nucleus(p, 1.0), p)


def test_top_p_samples_only_the_nucleus_in_proportion(tiny):
    model, tok = tiny
    prefix = "Q: 4 + 9 = ?\nA:"
    probs = torch.softmax(_logits(model, tok, prefix), -1)
    top_p = 0.7
    kept = nucleus(probs[None], top_p)[0]
    assert 2 <= int((kept > 0).sum()) < int((probs > 1e-3).sum()), "want a real truncation"
    ids, mask = encode(tok, [prefix])
    out = sample(model, ids, mask, 1, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                 n=20_000, top_p=top_p, generator=torch.Generator().manual_seed(2))
    counts = torch.bincount(out[:, 0], minlength=probs.numel())
    assert int(counts[kept == 0].sum()) == 0
    _freq_close(counts, kept / kept.sum())


def test_bad_sampling_settings_name_the_field(tiny):
    backend = BACKENDS.get("hf")(*tiny)
    with pytest.raises(ValueError, match="rollout.temperature"):
        backend.generate(["a"], n=1, max_new_tokens=2, temperature=0.0)
    with pytest.raises(ValueError, match="rollout.top_p"):
        backend.generate(["a"], n=1, max_new_tokens=2, top_p=0.0)
