"""Learning is real: from the cached pretrained base, 40 RL steps raise greedy arith test
accuracy by at least 5 points.

Slow (minutes: pretraining the base if it is not cached, then 40 steps per cell); run with
`pytest -m slow tests/test_learning.py`, or see `python bench/perf/trainer.py` and
`python bench/perf/rpg_learning.py`, which print the same figures.
"""

import pytest

from gbmpo import config as C
from gbmpo.trainer import train

CELLS = {
    # the foundation's check: Dr. GRPO with the k3 KL at the GRPO default coefficient
    "dr_grpo+kl_k3": ["algorithm.name=dr_grpo", "divergence.name=kl_k3"],
    # RPG Algorithm 2 as bench/perf/rpg_learning.py runs it: iterative reference, two updates
    # per batch (so the clip and the truncated importance weights act), ufkl at 1e-4
    "rpg_reinforce": ["algorithm.name=rpg_reinforce", "divergence.name=none",
                      "divergence.beta=0.0", "reference.update_every=1",
                      "optim.updates_per_batch=2", "algorithm.params.kl=ufkl",
                      "algorithm.params.beta=1e-4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("cell", list(CELLS))
def test_forty_steps_beat_the_base(cell, tmp_path):
    cfg = C.load(None, [*CELLS[cell], "run.steps=40", "rollout.prompts_per_step=8",
                        "rollout.samples_per_prompt=8"])
    result = train(cfg, tmp_path / "cell", progress=False)
    base = result["metrics"]["base_accuracy"]["value"]
    final = result["metrics"]["accuracy"]["value"]
    assert result["eval"]["n"] >= 200
    assert final - base >= 0.05, f"{cell}: base {base:.3f} -> final {final:.3f}"
