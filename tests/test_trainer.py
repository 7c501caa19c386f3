"""End-to-end behaviour of one training cell on the embedded tiny model (random-ish weights:
a 3-step pretraining keeps these tests fast; learning itself is checked in bench/perf/trainer.py
and the slow test)."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gbmpo import config as C
from gbmpo.models import ensure_tiny
from gbmpo.rollout.base import completion_mask_from_ids
from gbmpo.trainer import train

TIMING = ("_time_s", "_per_s")

FAST = {
    "pretrain": {"steps": 3, "batch_size": 8},
    "run": {"steps": 2},
    "eval": {"n": 6, "batch_size": 6},
    "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 16},
}


def fast_cfg(**sections) -> C.RunConfig:
    data = json.loads(json.dumps(FAST))
    for sec, vals in sections.items():
        data.setdefault(sec, {}).update(vals)
    return C.from_dict(data)


def test_two_step_cell_changes_every_parameter_and_writes_valid_result(tmp_path):
    # kl_k1 has a non-zero gradient even at policy == reference, so every parameter that
    # influences log-probs moves, whatever the (near-zero) rewards of a random model are.
    cfg = fast_cfg(divergence={"name": "kl_k1", "beta": 0.5}, run={"steps": 2, "save_model": True})
    base = load_file(str(ensure_tiny(cfg.pretrain) / "model.safetensors"))
    result = train(cfg, tmp_path / "cell", progress=False)
    after = load_file(str(tmp_path / "cell" / "model" / "model.safetensors"))
    unchanged = [k for k in base if torch.equal(base[k], after[k])]
    assert not unchanged, f"parameters not updated: {unchanged}"

    on_disk = json.loads((tmp_path / "cell" / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["schema_version"] == 1 and on_disk["status"] == "completed"
    assert (on_disk["task"], on_disk["algorithm"], on_disk["divergence"]) == (
        "arith", "dr_grpo", "kl_k1")
    for key in ("accuracy", "accuracy_strict", "accuracy_flexible", "base_accuracy",
                "response_tokens_mean"):
        assert on_disk["metrics"][key]["direction"] in ("max", "min", "none")
    # |reg|/|pg| is left out on steps without a policy gradient (this barely trained base
    # earns no reward, so it may have none at all); where present it is 'none'-directed
    assert on_disk["metrics"].get("reg_pg_ratio", {"direction": "none"})["direction"] == "none"
    assert on_disk["eval"]["n"] == 6
    prov = on_disk["provenance"]
    assert {"git_hash", "git_dirty", "libraries", "hardware"} <= set(prov)
    assert prov["libraries"]["torch"] == torch.__version__
    assert C.from_dict(on_disk["config"]) == cfg  # the stored config rebuilds the run
    rows = [json.loads(x) for x in (tmp_path / "cell" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["eval", "train", "train", "eval"]
    for key in ("reward_mean", "response_len_mean", "response_len_max", "truncation_rate",
                "clip_frac", "divergence", "reg_pg_ratio", "grad_norm", "step_time_s"):
        assert key in rows[1]
    saved = C.load(tmp_path / "cell" / "config.toml")
    assert saved == cfg


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = fast_cfg(divergence={"name": "kl_k3"}, algorithm={"name": "grpo"})
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)

    def rows(d):
        out = []
        for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            out.append({k: v for k, v in row.items() if not k.endswith(TIMING)})
        return out

    assert rows("a") == rows("b")
    other = C.from_dict({**json.loads(json.dumps(FAST)), "run": {"steps": 2, "seed": 1},
                         "divergence": {"name": "kl_k3"}, "algorithm": {"name": "grpo"}})
    train(other, tmp_path / "c", progress=False)
    assert rows("c") != rows("a")


def test_non_finite_update_stops_with_diverged(tmp_path):
    # beta = 1e38 makes the gradient norm overflow float32 on the first step
    cfg = fast_cfg(divergence={"name": "kl_k1", "beta": 1e38})
    result = train(cfg, tmp_path / "cell", progress=False)
    assert result["status"] == "diverged"
    assert result["diverged_step"] == 1
    assert "non-finite" in result["reason"]
    assert "accuracy" not in result["metrics"]


def _cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "gbmpo", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_unknown_divergence_fails_before_any_model_loads(tmp_path):
    cache = tmp_path / "cache"
    p = _cli("train", "--set", "divergence.name=kl_k4", "--out", str(tmp_path / "o"),
             env_extra={"GBMPO_CACHE": str(cache)})
    assert p.returncode == 2
    assert "kl_k4" in p.stderr and "Did you mean" in p.stderr and "kl_k3" in p.stderr
    assert "Valid choices" in p.stderr and "neural_mirror" in p.stderr
    assert not cache.exists() and not (tmp_path / "o").exists()


def test_unknown_config_key_is_named(tmp_path):
    p = _cli("train", "--set", "optim.learning_rate=1e-3")
    assert p.returncode == 2
    assert "optim.learning_rate" in p.stderr
    assert re.search(r"Valid: [a-z_, ]*\blr\b", p.stderr)
    p = _cli("train", "--set", "optim.lrr=1e-3")
    assert "Did you mean 'optim.lr'" in p.stderr
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[rollout]\nsamples = 4\n')
    p = _cli("train", "--config", str(cfg_file))
    assert p.returncode == 2 and "rollout.samples" in p.stderr


def test_bad_values_and_pairings_fail_fast():
    with pytest.raises(C.ConfigError, match="samples_per_prompt"):
        fast_cfg(rollout={"samples_per_prompt": 1})
    with pytest.raises(C.ConfigError, match="run.steps must be int"):
        C.load(None, ["run.steps=ten"])
    with pytest.raises(C.ConfigError, match="eval.split"):
        fast_cfg(eval={"split": "dev"})
    with pytest.raises(C.ConfigError, match="pretrain.tasks"):
        fast_cfg(pretrain={"tasks": ["arithmetic"]})


def test_config_toml_roundtrip_and_hash():
    cfg = fast_cfg(divergence={"name": "neural_mirror", "beta": 1e-4,
                               "params": {"init_scale": 0.02}})
    assert C.from_dict(__import__("tomllib").loads(cfg.to_toml())) == cfg
    assert cfg.hash() == C.from_dict(cfg.to_dict()).hash()
    assert cfg.hash() != fast_cfg().hash()


def test_completion_mask_includes_eos_and_flags_truncation():
    eos, pad = 1, 0
    ids = torch.tensor([[5, 6, eos, pad, pad], [5, 6, 7, 8, 9], [eos, pad, pad, pad, pad]])
    mask, trunc = completion_mask_from_ids(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert trunc.tolist() == [False, True, False]


def test_hf_rollout_groups_and_masks():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gbmpo.rollout.hf import HFRollout

    path = ensure_tiny(fast_cfg().pretrain, progress=False)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    backend = HFRollout(model, tok)
    batch = backend.generate(["Q: a\nA: ", "Q: longer prompt\nA: "], n=3, max_new_tokens=12,
                             temperature=1.0, seed=0)
    assert batch.completion_ids.shape[0] == 6 and batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.prompt_mask[:3, 0].tolist() == [False] * 3  # shorter prompt is left-padded
    for ids, m, tr in zip(batch.completion_ids, batch.completion_mask, batch.truncated,
                          strict=True):
        n = int(m.sum())
        if tr:
            assert n == batch.completion_ids.shape[1] and tok.eos_token_id not in ids.tolist()
        else:
            assert ids[n - 1] == tok.eos_token_id
    again = backend.generate(["Q: a\nA: ", "Q: longer prompt\nA: "], n=3, max_new_tokens=12,
                             seed=0)
    assert torch.equal(again.completion_ids, batch.completion_ids)  # seeded sampling


def test_two_step_pycode_cell_scores_through_the_sandbox(tmp_path):
    cfg = fast_cfg(task={"name": "pycode"})
    result = train(cfg, tmp_path / "cell", progress=False)
    assert result["status"] == "completed" and result["task"] == "pycode"
    assert result["provenance"]["sandbox_isolation"]  # every code reward names its isolation
    report = result["provenance"]["sandbox"]
    assert report["isolation"] == result["provenance"]["sandbox_isolation"]
    assert report["runs"] > 0 and report["in_process_runs"] == 0  # pycode needs no fallback


def test_two_step_gsm8k_cell_from_local_files(tmp_path, shared_data):
    cfg = fast_cfg(task={"name": "gsm8k", "params": {"path": str(shared_data / "gsm8k")}},
                   eval={"n": 4, "batch_size": 4})
    result = train(cfg, tmp_path / "cell", progress=False)
    assert result["status"] == "completed" and result["eval"]["n"] == 4
    assert {"accuracy_strict", "accuracy_flexible"} <= set(result["metrics"])


@pytest.mark.parametrize("shape, hint", [
    ((), "a scalar"), (("B",), "one value per sequence"), (("B", "T+1"), "columns")])
def test_a_divergence_of_the_wrong_shape_stops_before_any_update(tmp_path, shape, hint):
    from gbmpo.checks import PluginOutputError
    from gbmpo.divergences import DIVERGENCES, Divergence

    class Bad(Divergence):
        def per_token(self, view):
            B, T = view.logp.shape
            dims = [{"B": B, "T": T, "T+1": T + 1}[d] for d in shape]
            return view.logp.sum() * 0 + torch.zeros(dims)

    DIVERGENCES.register("bad_shape_test")(Bad)
    try:
        cfg = fast_cfg(divergence={"name": "bad_shape_test", "beta": 0.1},
                       run={"steps": 2, "save_model": True})
        base = load_file(str(ensure_tiny(cfg.pretrain) / "model.safetensors"))
        with pytest.raises(PluginOutputError) as e:
            train(cfg, tmp_path / "cell", progress=False)
    finally:
        DIVERGENCES._regs.pop("bad_shape_test")
    msg = str(e.value)
    assert "divergence 'bad_shape_test'" in msg and "per_token" in msg and hint in msg
    assert not (tmp_path / "cell" / "model").exists()  # nothing trained, nothing saved
    assert base  # the base weights were read; the policy never took a step
    rows = (tmp_path / "cell" / "metrics.jsonl").read_text().splitlines()
    assert not any('"kind": "train"' in r for r in rows)
