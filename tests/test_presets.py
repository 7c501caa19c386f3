"""`gbmpo-bench train --preset NAME`: presets come from one table, and --config and --set win
over them."""

import pytest

from gbmpo import config as C
from gbmpo import presets
from gbmpo.cli import build_parser, main
from gbmpo.commands.train import COLUMNS, default_out


def test_precedence_defaults_preset_file_set(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("[run]\nsteps = 5\n\n[eval]\nn = 30\n")
    cfg = presets.load("quick", f, ["eval.n=7", "divergence.name=none"])
    assert cfg.rollout.prompts_per_step == 8 and cfg.rollout.samples_per_prompt == 8  # preset
    assert cfg.run.steps == 5  # the file over the preset
    assert cfg.eval.n == 7 and cfg.divergence.name == "none"  # --set over both
    assert cfg.model.name == "tiny" and cfg.pretrain == C.PretrainSection()  # the shipped base
    quick = presets.load("quick")
    assert (quick.run.steps, quick.eval.n, quick.eval.samples) == (10, 50, 4)
    assert presets.load(None) == C.load()


def test_unknown_preset_and_bad_override_are_config_errors():
    with pytest.raises(C.ConfigError, match="^unknown preset 'quik'; valid: quick$"):
        presets.load("quik")
    with pytest.raises(C.ConfigError, match="unknown key in \\[run\\] 'run.stepz'"):
        presets.load("quick", None, ["run.stepz=3"])


def test_help_lists_every_preset_from_the_table():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["train"].format_help()
    for name, preset in presets.PRESETS.items():
        assert f"  {name}: {preset.summary}" in text.splitlines()
        assert name in text.split("--preset {")[1].split("}")[0]
    assert "sets model.name=\"tiny\", run.steps=10" in text


def test_default_output_goes_under_the_preset():
    cfg = presets.load("quick", None, ["divergence.name=none"])
    assert default_out(cfg, "quick") == f"runs/quick/arith__dr_grpo__none__s0__{cfg.hash()}"


def test_quick_run_prints_a_comparable_row(tmp_path, capsys):
    out = tmp_path / "cell"
    rc = main(["train", "--preset", "quick", "--quiet", "--out", str(out),
               "--set", "pretrain.steps=3", "--set", "pretrain.batch_size=8",
               "--set", "run.steps=2", "--set", "eval.n=6", "--set", "rollout.prompts_per_step=2",
               "--set", "rollout.max_new_tokens=16", "--set", "divergence.name=kl_k1"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"completed: {out}/result.json"
    assert lines[1].split() == list(COLUMNS)
    row = dict(zip(COLUMNS, lines[2].split(), strict=True))
    assert (row["divergence"], row["beta"], row["algorithm"], row["steps"]) == (
        "kl_k1", "0.04", "dr_grpo", "2")
    assert lines[3].startswith("greedy accuracy on 6 test items: one accuracy is within +-0.40")
    assert lines[4] == ("compare: gbmpo-bench train --preset quick --set divergence.name=none "
                        "(with the same other --set)")
    saved = C.load(out / "config.toml")
    assert saved.rollout.samples_per_prompt == 8 and saved.rollout.prompts_per_step == 2
