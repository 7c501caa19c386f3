"""Named starting points for `gbmpo-bench train --preset NAME`, defined here and nowhere else.

A preset is a partial run config (the same nesting as a TOML run file). Precedence, lowest
first: the config defaults, the preset, `--config FILE`, then each `--set key=value`; so a
preset never hides a value the user gives. `--help` lists the presets from this table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbmpo import config as C


@dataclass(frozen=True)
class Preset:
    summary: str  # one line for --help
    config: dict[str, Any] = field(default_factory=dict)  # sections -> keys, as in TOML


PRESETS: dict[str, Preset] = {
    # The shipped tiny base (model "tiny" with the default [pretrain] recipe: loads at once
    # when the project ships it, else it is pretrained once and cached), the default task,
    # and a run just long enough to see a divergence change something: 10 RL steps of
    # 8 prompts x 8 samples (~1.5 s each on 2 idle CPU cores), greedy accuracy on 50 test
    # items and 4 samples per item for pass@k and the drift from the base (16 by default:
    # the sampled evaluation would cost more than the training). Everything else
    # (algorithm, divergence, beta, seed) keeps the defaults unless --set.
    "quick": Preset(
        "one-minute try-out on the shipped tiny base: 10 RL steps, eval on 50 test items; "
        "compare two runs that differ in --set divergence.name=...",
        {"model": {"name": "tiny"},
         "run": {"steps": 10},
         "rollout": {"prompts_per_step": 8, "samples_per_prompt": 8},
         "eval": {"n": 50, "samples": 4}},
    ),
}


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section (a key in `top` replaces the same key in base)."""
    out = json.loads(json.dumps(base))
    for section, values in top.items():
        if isinstance(values, dict) and isinstance(out.get(section), dict):
            out[section].update(values)
        else:
            out[section] = values
    return out


def load(preset: str | None, path: str | Path | None = None,
         overrides: list[str] | None = None) -> C.RunConfig:
    """defaults <- preset <- TOML file <- `a.b=value` overrides, then validation."""
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise C.ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
        data = PRESETS[preset].config
    if path is not None:
        data = _merge(data, C.read_toml(path))
    return C.from_dict(C.apply_overrides(data, overrides or []))


def help_text() -> str:
    """The presets as --help lines: name, summary, and the keys each sets."""
    lines = ["presets (--preset NAME; --config and --set override them):"]
    for name, p in PRESETS.items():
        keys = ", ".join(f"{s}.{k}={json.dumps(v)}" for s, kv in p.config.items()
                         for k, v in kv.items())
        lines += [f"  {name}: {p.summary}", f"      sets {keys}"]
    return "\n".join(lines)
