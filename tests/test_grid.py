"""Grid files: expansion (counts, ids, override order, exclusions) and every malformed-grid
error naming its problem before anything trains."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from bench.grid import GridError, expand, load_grid, manifest, parse_grid

GRIDS = Path(__file__).resolve().parent.parent / "bench" / "grids"
ID_RE = re.compile(r"^(\w+?)__(\w+?)__(\w+?)__b(\d+)__s(\d+)__([0-9a-f]{8})$")

VALID = {
    "version": 1,
    "name": "t",
    "base": {"run": {"steps": 3}, "eval": {"n": 4}},
    "axes": {"tasks": ["arith"], "algorithms": ["dr_grpo", "grpo"],
             "divergences": ["none", "kl_k3", "probl2"], "seeds": [0, 1]},
    "baseline": {"algorithm": "dr_grpo", "divergence": "none"},
}


def grid(**changes):
    data = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_tiny_grid_is_the_documented_main_job():
    cells = expand(load_grid(GRIDS / "tiny.toml"))
    assert len(cells) == 24
    assert {(c.algorithm, c.divergence) for c in cells} == {
        ("dr_grpo", d) for d in ("none", "kl_k3", "probl2", "neural_mirror")}
    assert sorted({(c.base, c.seed) for c in cells}) == [(b, s) for b in (0, 1, 2)
                                                         for s in (0, 1)]
    betas = {c.divergence: c.config.divergence.beta for c in cells}
    assert betas == {"none": 0.0, "kl_k3": 0.04, "probl2": 1e-4, "neural_mirror": 1e-4}
    for c in cells:
        assert (c.config.run.steps, c.config.rollout.prompts_per_step,
                c.config.rollout.samples_per_prompt, c.config.eval.n,
                c.config.eval.samples) == (15, 8, 8, 200, 16)
        assert (c.config.task.name, c.config.model.name) == ("arith", "tiny")
        assert c.config.pretrain.seed == c.base and "reverse" in c.config.eval.transfer


def test_smoke_grid_is_four_short_cells():
    cells = expand(load_grid(GRIDS / "smoke.toml"))
    assert len(cells) == 4
    assert all(c.config.run.steps == 2 and c.config.eval.n <= 16 for c in cells)


def test_cell_ids_are_readable_unique_and_track_the_config():
    cells = expand(parse_grid(grid()))
    assert len(cells) == 1 * 2 * 3 * 2
    assert len({c.cell_id for c in cells}) == len(cells)
    for c in cells:
        task, algo, div, base, seed, digest = ID_RE.match(c.cell_id).groups()
        assert (task, algo, div, int(base), int(seed)) == (c.task, c.algorithm, c.divergence,
                                                           c.base, c.seed)
        assert digest == c.config.hash()
        assert (c.config.task.name, c.config.algorithm.name, c.config.divergence.name,
                c.config.run.seed) == (c.task, c.algorithm, c.divergence, c.seed)
    # pure: same grid, same ids, in file order; a config change gives new ids
    assert [c.cell_id for c in expand(parse_grid(grid()))] == [c.cell_id for c in cells]
    assert [(c.algorithm, c.divergence, c.seed) for c in cells[:3]] == [
        ("dr_grpo", "none", 0), ("dr_grpo", "none", 1), ("dr_grpo", "kl_k3", 0)]
    changed = expand(parse_grid(grid(base={"run": {"steps": 4}, "eval": {"n": 4}})))
    assert not {c.cell_id for c in changed} & {c.cell_id for c in cells}


def test_overrides_apply_task_then_algorithm_then_divergence_then_seed():
    overrides = {
        "task": {"arith": {"optim": {"lr": 1e-3}, "eval": {"n": 7}}},
        "algorithm": {"grpo": {"optim": {"lr": 2e-3}, "rollout": {"samples_per_prompt": 4}}},
        "divergence": {"kl_k3": {"optim": {"lr": 3e-3}, "divergence": {"beta": 0.5}}},
        "seed": {"1": {"optim": {"lr": 4e-3}}},
    }
    cells = {(c.algorithm, c.divergence, c.seed): c.config
             for c in expand(parse_grid(grid(overrides=overrides)))}
    assert cells["dr_grpo", "none", 0].optim.lr == 1e-3
    assert cells["grpo", "none", 0].optim.lr == 2e-3
    assert cells["grpo", "kl_k3", 0].optim.lr == 3e-3
    assert cells["grpo", "kl_k3", 1].optim.lr == 4e-3
    # tables merge key by key: earlier overrides and [base] survive where not overridden
    cfg = cells["grpo", "kl_k3", 1]
    assert (cfg.eval.n, cfg.rollout.samples_per_prompt, cfg.divergence.beta) == (7, 4, 0.5)
    assert cfg.run.steps == 3
    assert cells["dr_grpo", "probl2", 0].rollout.samples_per_prompt == 8


def test_exclusions_drop_exactly_the_matching_cells():
    rules = [{"algorithm": "grpo", "divergence": "probl2"}, {"seed": 1, "divergence": "none"}]
    cells = expand(parse_grid(grid(exclude=rules)))
    keys = {(c.algorithm, c.divergence, c.seed) for c in cells}
    assert len(cells) == 12 - 2 - 2
    assert not any(a == "grpo" and d == "probl2" for a, d, _ in keys)
    assert not any(d == "none" and s == 1 for _, d, s in keys)
    assert ("dr_grpo", "probl2", 1) in keys


def test_manifest_lists_every_cell():
    g = parse_grid(grid())
    cells = expand(g)
    m = manifest(g, cells)
    assert m["schema_version"] == 1 and m["name"] == "t"
    assert m["baseline"] == {"algorithm": "dr_grpo", "divergence": "none"}
    assert m["primary_metric"] == "accuracy"
    assert [e["cell_id"] for e in m["cells"]] == [c.cell_id for c in cells]
    assert set(m["cells"][0]) == {"cell_id", "task", "algorithm", "divergence", "seed", "base",
                                  "sweep"}
    assert m["sweep_keys"] == [] and m["cells"][0]["sweep"] == {}


def test_readme_example_is_a_valid_grid(tmp_path):
    text = (GRIDS / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "example.toml").write_text(block)
    cells = expand(load_grid(tmp_path / "example.toml"))
    assert cells and len({c.cell_id for c in cells}) == len(cells)


AXES = VALID["axes"]
MALFORMED = [
    ("unknown top-level key", {"axis": {}}, ["unknown top-level key 'axis'", "'axes'"]),
    ("missing version", {"version": None}, ["missing 'version'"]),
    ("future version", {"version": 2}, ["version 2 is not supported"]),
    ("missing axes", {"axes": None}, ["missing [axes]"]),
    ("unknown axis", {"axes": {**AXES, "seed": [0]}}, ["unknown axis 'seed'", "'seeds'"]),
    ("empty axis", {"axes": {**AXES, "seeds": []}}, ["axes.seeds must be a non-empty list"]),
    ("duplicate seed", {"axes": {**AXES, "seeds": [0, 1, 0]}}, ["axes.seeds lists 0 more"]),
    ("duplicate divergence", {"axes": {**AXES, "divergences": ["none", "none"]}},
     ["axes.divergences lists none more"]),
    ("string seed", {"axes": {**AXES, "seeds": ["0"]}}, ["axes.seeds must hold non-negative"]),
    ("unknown divergence", {"axes": {**AXES, "divergences": ["none", "probl3"]}},
     ["unknown divergence 'probl3'", "Did you mean 'probl2'"]),
    ("unknown algorithm", {"axes": {**AXES, "algorithms": ["dr_grpo", "gpro"]}},
     ["unknown algorithm 'gpro'", "'grpo'"]),
    ("unknown task", {"axes": {**AXES, "tasks": ["arithm"]}}, ["unknown task 'arithm'"]),
    ("bad override key", {"overrides": {"divergence": {"kl_k3": {"divergence": {"betta": 1}}}}},
     ["[overrides.divergence.kl_k3]", "'divergence.betta'", "divergence.beta"]),
    ("bad override section", {"overrides": {"seed": {"0": {"optimm": {"lr": 1.0}}}}},
     ["[overrides.seed.0]", "unknown section 'optimm'"]),
    ("bad override type", {"overrides": {"algorithm": {"grpo": {"run": {"steps": "9"}}}}},
     ["[overrides.algorithm.grpo]", "run.steps must be int"]),
    ("override of a value not in the grid",
     {"overrides": {"divergence": {"kl_k2": {"divergence": {"beta": 1.0}}}}},
     ["divergence 'kl_k2' is not in the grid"]),
    ("override of an unknown axis", {"overrides": {"divergences": {"kl_k3": {}}}},
     ["unknown axis in [overrides] 'divergences'", "'divergence'"]),
    ("override setting an axis key",
     {"overrides": {"algorithm": {"grpo": {"divergence": {"name": "kl_k1"}}}}},
     ["sets divergence.name, which the divergence axis owns"]),
    ("base setting an axis key", {"base": {"run": {"seed": 3}}},
     ["[base] sets run.seed, which the seed axis owns"]),
    ("bad base key", {"base": {"rollout": {"sample_per_prompt": 4}}},
     ["[base]", "'rollout.sample_per_prompt'"]),
    ("baseline not in the grid", {"baseline": {"algorithm": "gspo", "divergence": "none"}},
     ["[baseline]: algorithm 'gspo' is not in the grid"]),
    ("baseline missing", {"baseline": None}, ["missing [baseline]"]),
    ("baseline excluded", {"exclude": [{"algorithm": "dr_grpo", "divergence": "none"}]},
     ["baseline dr_grpo:none is excluded"]),
    ("exclude with an unknown key", {"exclude": [{"optimizer": "adam"}]},
     ["unknown axis in [[exclude]] #1 'optimizer'"]),
    ("exclude with a value not in the grid", {"exclude": [{"divergence": "kl_k1"}]},
     ["[[exclude]] #1: divergence 'kl_k1' is not in the grid"]),
    ("empty exclude", {"exclude": [{}]}, ["[[exclude]] #1 is empty"]),
    ("everything excluded", {"exclude": [{"task": "arith"}]}, ["every cell is excluded"]),
    ("unknown resource", {"resources": {"num_gpu": 1}}, ["unknown key in [resources] 'num_gpu'"]),
    ("negative timeout", {"resources": {"timeout_s": -1}}, ["resources.timeout_s must be"]),
    ("bad name", {"name": "a/b"}, ["name 'a/b' must be"]),
    ("invalid cell config", {"base": {"eval": {"n": 0}}},
     ["cell arith/dr_grpo/none/base 0/seed 0", "eval.n must be >= 1"]),
]


@pytest.mark.parametrize("changes,expected", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_grid_fails_naming_the_problem(changes, expected):
    with pytest.raises(GridError) as err:
        expand(parse_grid(grid(**changes), source="g.toml"))
    msg = str(err.value)
    assert msg.startswith("g.toml: ")
    for part in expected:
        assert part in msg, msg


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(GridError, match="does not exist"):
        load_grid(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 1\n[axes\n")
    with pytest.raises(GridError, match=r"bad\.toml: invalid TOML"):
        load_grid(bad)
    ok = tmp_path / "named-by-file.toml"
    ok.write_text('version = 1\n[axes]\ntasks = ["arith"]\nalgorithms = ["grpo"]\n'
                  'divergences = ["none"]\nseeds = [5]\n[baseline]\nalgorithm = "grpo"\n'
                  'divergence = "none"\n[overrides.seed.5]\ndivergence.beta = 0.0\n')
    g = load_grid(ok)
    assert g.name == "named-by-file"
    (cell,) = expand(g)
    assert cell.cell_id.startswith("arith__grpo__none__b0__s5__")
    assert cell.config.divergence.beta == 0.0


# ---- bases, sweeps and "every registered entry" ------------------------------------------------
def test_bases_axis_sets_the_pretraining_seed_and_shows_in_ids():
    cells = expand(parse_grid(grid(axes={**VALID["axes"], "bases": [0, 2], "seeds": [1]})))
    assert len(cells) == 1 * 2 * 3 * 2 * 1
    assert {(c.base, c.config.pretrain.seed) for c in cells} == {(0, 0), (2, 2)}
    assert all(f"__b{c.base}__s1__" in c.cell_id for c in cells)
    # without the axis, the one base is the recipe's own seed, still named in the id
    (one,) = expand(parse_grid(grid(
        base={"pretrain": {"seed": 3}},
        axes={"tasks": ["arith"], "algorithms": ["dr_grpo"], "divergences": ["none"],
              "seeds": [0]})))
    assert one.base == 3 and one.config.pretrain.seed == 3 and "__b3__s0__" in one.cell_id


def test_sweep_per_divergence_and_for_all_cells_expands_in_order_with_readable_ids():
    sweep = {"all": {"optim": {"lr": [1e-5, 5e-5]}},
             "divergence": {"kl_k3": {"divergence.beta": [0.1, 1.0, 10.0]},
                            "probl2": {"divergence": {"beta": [100]}}}}
    g = parse_grid(grid(sweep=sweep, axes={**VALID["axes"], "algorithms": ["dr_grpo"],
                                           "seeds": [0]}))
    cells = expand(g)
    by_div = {d: [c for c in cells if c.divergence == d] for d in ("none", "kl_k3", "probl2")}
    assert [len(v) for v in by_div.values()] == [2, 6, 2]
    assert [c.sweep_values() for c in by_div["kl_k3"][:3]] == [
        {"optim.lr": 1e-5, "divergence.beta": b} for b in (0.1, 1.0, 10.0)]
    for c in cells:
        for path, value in c.sweep:
            sec, key = path.split(".")
            assert getattr(getattr(c.config, sec), key) == value
    assert by_div["kl_k3"][1].cell_id.startswith("arith__dr_grpo__kl_k3__lr=1e-05__beta=1__b0__")
    assert by_div["none"][0].cell_id.startswith("arith__dr_grpo__none__lr=1e-05__b0__s0__")
    assert len({c.cell_id for c in cells}) == len(cells)
    assert manifest(g, cells)["sweep_keys"] == ["divergence.beta", "optim.lr"]
    assert [c.cell_id for c in expand(g)] == [c.cell_id for c in cells]  # pure


def test_sweep_label_uses_full_paths_only_where_last_components_collide():
    from bench.grid import sweep_label

    assert sweep_label({"divergence.beta": 0.5, "optim.lr": 3e-4}) == "beta=0.5__lr=0.0003"
    assert sweep_label({"optim.betas": [0.9, 0.95], "run.steps": 4}) == "betas=0.9-0.95__steps=4"
    both = sweep_label({"divergence.params.scale": 1.0, "task.params.scale": 2})
    assert both == "divergence.params.scale=1__task.params.scale=2"


@pytest.mark.parametrize("sweep, message", [
    ({"divergence": {"kl_k3": {"divergence.name": ["l2"]}}}, "which the divergence axis owns"),
    ({"all": {"run.seed": [1, 2]}}, "which the seed axis owns"),
    ({"all": {"optim.lr": 1e-4}}, "optim.lr must be a non-empty list"),
    ({"all": {"optim.lr": []}}, "optim.lr must be a non-empty list"),
    ({"all": {"optim.lr": [1e-4, 1e-4]}}, "more than once"),
    ({"all": {"optim.lrr": [1e-4]}}, "Did you mean 'optim.lr'"),
    ({"all": {"divergence.beta": ["big"]}}, "divergence.beta must be float"),
    ({"divergence": {"kl_k9": {"divergence.beta": [1.0]}}},
     "divergence 'kl_k9' is not in the grid"),
    ({"seed": {"0": {"optim.lr": [1e-4]}}}, "Valid: all, task, algorithm, divergence"),
])
def test_malformed_sweeps_fail_naming_the_key(sweep, message):
    with pytest.raises(GridError) as e:
        parse_grid(grid(sweep=sweep), source="g.toml")
    assert message in str(e.value) and str(e.value).startswith("g.toml: ")


def test_all_registered_divergences_with_exceptions_follow_the_registry():
    from gbmpo.divergences import DIVERGENCES

    g = parse_grid(grid(axes={**VALID["axes"],
                              "divergences": {"all": True, "except": ["neural_mirror_es"]}}))
    assert g.axes["divergence"] == [n for n in DIVERGENCES.names() if n != "neural_mirror_es"]
    assert parse_grid(grid(axes={**VALID["axes"], "divergences": "all"})).axes[
        "divergence"] == DIVERGENCES.names()
    with pytest.raises(GridError, match="name in axes.divergences.except 'kl_k33'"):
        parse_grid(grid(axes={**VALID["axes"], "divergences": {"all": True,
                                                               "except": ["kl_k33"]}}))
    with pytest.raises(GridError, match=r"must be \{all = true, except"):
        parse_grid(grid(axes={**VALID["axes"], "divergences": {"every": True}}))


def test_tiny_full_grid_takes_every_registered_divergence_and_algorithm():
    from gbmpo.algorithms import ALGORITHMS
    from gbmpo.divergences import DIVERGENCES

    g = load_grid(GRIDS / "tiny-full.toml")
    assert set(g.axes["divergence"]) == set(DIVERGENCES.names())
    assert set(g.axes["algorithm"]) == set(ALGORITHMS.names())


def test_exclude_rules_take_lists_and_not():
    rules = [{"algorithm": "grpo", "divergence": {"not": ["none"]}},
             {"divergence": ["probl2"], "seed": [1]}]
    cells = expand(parse_grid(grid(exclude=rules)))
    got = {(c.algorithm, c.divergence, c.seed) for c in cells}
    assert ("grpo", "kl_k3", 0) not in got and ("grpo", "none", 0) in got
    assert ("dr_grpo", "probl2", 1) not in got and ("dr_grpo", "probl2", 0) in got
    assert len(cells) == 12 - 4 - 1
    with pytest.raises(GridError, match=r"must be \{not = \[\.\.\.\]\}"):
        parse_grid(grid(exclude=[{"divergence": {"only": ["none"]}}]))
    with pytest.raises(GridError, match="divergence 'kl_k9' is not in the grid"):
        parse_grid(grid(exclude=[{"divergence": {"not": ["kl_k9"]}}]))
