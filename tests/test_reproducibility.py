"""What reproduces: shipped bases verified by checksum, `pretrain` comparing a rebuild with the
shipped base and saying why they differ, and RL results bitwise equal across thread counts."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gbmpo import bases
from gbmpo import config as C
from gbmpo.models import ensure_local_tiny, ensure_tiny, tiny_key

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["pretrain.steps=3", "pretrain.batch_size=8"]
TIMING = ("_time_s", "_per_s")


def _pretrain_cli(argv):
    from gbmpo.commands import pretrain as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd.run(p.parse_args(argv))


@pytest.fixture
def shipped_root(tmp_path, monkeypatch):
    root = tmp_path / "bases"
    root.mkdir()
    monkeypatch.setattr(bases, "SHIPPED_ROOT", root)
    return root


def test_every_shipped_base_passes_its_checksums():
    records = bases.shipped_records()
    assert records, "the project ships its tiny bases under gbmpo/bases/"
    for rec in records:
        key = rec["dir"].removeprefix("tiny-")
        assert bases.find_shipped(key) is not None
        assert rec["key"] == key and set(rec["files"]) >= {bases.WEIGHTS, "config.json",
                                                            "tokenizer.json"}
        assert rec["float_env"]["cpu_capability"] and rec["float_env"]["threads"] >= 1
    cfg = C.load(None, [])
    assert tiny_key(cfg.pretrain) in {r["key"] for r in records}  # the default recipe ships


def test_the_default_recipe_loads_the_shipped_base_without_pretraining(tmp_path, monkeypatch):
    monkeypatch.setenv("GBMPO_CACHE", str(tmp_path / "empty-cache"))
    cfg = C.load(None, [])
    path = ensure_tiny(cfg.pretrain, progress=False)
    assert path.parent == bases.SHIPPED_ROOT
    assert not (tmp_path / "empty-cache").exists()  # nothing was pretrained
    local = C.load(None, ["pretrain.source=local", "pretrain.steps=3", "pretrain.batch_size=8"])
    assert tiny_key(local.pretrain) != tiny_key(cfg.pretrain)  # another recipe, another key
    assert tiny_key(C.load(None, ["pretrain.source=local"]).pretrain) == tiny_key(cfg.pretrain)


def test_a_damaged_shipped_base_is_refused_with_the_fix(shipped_root):
    cfg = C.load(None, SMALL)
    shutil.copytree(ensure_local_tiny(cfg.pretrain, progress=False),
                    shipped_root / f"tiny-{tiny_key(cfg.pretrain)}")
    assert ensure_tiny(cfg.pretrain, progress=False).parent == shipped_root
    weights = shipped_root / f"tiny-{tiny_key(cfg.pretrain)}" / bases.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(bases.BaseModelError) as e:
        ensure_tiny(cfg.pretrain, progress=False)
    msg = str(e.value)
    assert "model.safetensors fails its checksum" in msg and "git checkout" in msg
    assert 'pretrain.source = "local"' in msg


def test_pretrain_says_whether_a_rebuild_matches_the_shipped_base(shipped_root, capsys):
    cfg = C.load(None, SMALL)
    key = tiny_key(cfg.pretrain)
    local = ensure_local_tiny(cfg.pretrain, progress=False)
    shutil.copytree(local, shipped_root / f"tiny-{key}")
    assert _pretrain_cli(["--quiet", "--force", *sum((["--set", s] for s in SMALL), [])]) == 0
    out = capsys.readouterr().out
    assert "match: yes, bitwise identical weights" in out
    # a shipped base made elsewhere: other weights, another kernel family in its record
    from safetensors.torch import load_file, save_file

    ship = shipped_root / f"tiny-{key}"
    w = load_file(str(ship / bases.WEIGHTS))
    w[next(iter(w))] += 1e-3
    save_file(w, str(ship / bases.WEIGHTS), metadata={"format": "pt"})
    rec = bases.read_record(ship)
    rec["files"] = bases.checksums(ship)
    rec["float_env"]["cpu_capability"] = "AVX2" if rec["float_env"]["cpu_capability"] != \
        "AVX2" else "AVX512"
    (ship / bases.RECORD).write_text(json.dumps(rec))
    assert _pretrain_cli(["--quiet", *sum((["--set", s] for s in SMALL), [])]) == 0
    out = capsys.readouterr().out
    assert "match: no: the weights differ (largest |difference| 0.001" in out
    assert "cpu_capability: here" in out and "ATEN_CPU_CAPABILITY=" in out


def test_pretrain_seed_flag_and_resolve(shipped_root, capsys):
    assert _pretrain_cli(["--quiet", "--seed", "5", "--resolve",
                          *sum((["--set", s] for s in SMALL), [])]) == 0
    out = capsys.readouterr().out
    key = tiny_key(C.load(None, SMALL + ["pretrain.seed=5"]).pretrain)
    assert f"(local base, key {key})" in out


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith(TIMING)} for r in rows]


# Float diagnostics computed on small, differently shaped batches (the drift from pi_0 on the
# evaluation samples, the gradient-ratio probe): their matrix products may split their
# reductions by thread count, so they agree to ~1e-7 relative rather than bitwise.
DIAGNOSTICS = ("kl_pi_pi0", "kl_pi0_pi", "kl_pi_pi0_seq", "kl_pi0_pi_seq", "entropy",
               "entropy_pi0", "reg_pg_grad_ratio")


def _split(d: dict) -> tuple[dict, dict]:
    """(values compared bitwise, float diagnostics compared to 1e-5); a diagnostic written as
    null (infinite) is compared exactly."""
    diag = {k: v for k, v in d.items() if k in DIAGNOSTICS and v is not None}
    return {k: v for k, v in d.items() if k not in diag}, diag


def test_rl_results_are_bitwise_equal_across_thread_counts(tmp_path):
    """The same cell with 1 and with 2 torch threads, each in its own process: every sampled
    token, reward, loss, gradient norm and accuracy of every step is the same number (timings
    aside), and the float diagnostics agree to 1e-5 relative. This is what the README's
    reproducibility statement rests on; pretraining is the part that is not (gbmpo/bases.py)."""
    common = [*SMALL, "run.steps=3", "eval.n=6", "eval.batch_size=24", "eval.samples=4",
              "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4",
              "rollout.max_new_tokens=16", "divergence.name=kl_k1", "divergence.beta=0.5"]
    out = {}
    for threads in (1, 2):
        d = tmp_path / f"t{threads}"
        argv = [sys.executable, "-m", "gbmpo", "train", "--quiet", "--out", str(d),
                *sum((["--set", s] for s in common + [f"run.threads={threads}"]), [])]
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out[threads] = d
    a, b = (json.loads((out[t] / "result.json").read_text()) for t in (1, 2))
    assert a["provenance"]["float_env"]["threads"] == 1
    assert b["provenance"]["float_env"]["threads"] == 2
    exact_a, diag_a = _split({k: v["value"] for k, v in a["metrics"].items()})
    exact_b, diag_b = _split({k: v["value"] for k, v in b["metrics"].items()})
    assert exact_a == exact_b and a["items"] == b["items"]
    assert diag_a == pytest.approx(diag_b, rel=1e-5, abs=1e-12)
    for ra, rb in zip(_rows(out[1]), _rows(out[2]), strict=True):
        (ea, da), (eb, db) = _split(ra), _split(rb)
        assert ea == eb, (ra["kind"], ra["step"])
        assert da == pytest.approx(db, rel=1e-5, abs=1e-12)
