"""The statistics that decide whether a difference is real: variance components over bases and
RL seeds, two-level bootstrap CIs that also resample evaluation items, paired comparisons,
Holm adjustment, seeds needed, and the matched-budget table. Golden values are computed by
hand in the comments."""

from __future__ import annotations

import json
import math
import warnings
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import leaderboards
from leaderboards.reading import LeaderboardWarning, load
from leaderboards.stats import (
    design_weights,
    hierarchical_replicates,
    holm,
    item_counts,
    percentile_ci,
    seeds_needed,
    variance_components,
)

# Two bases x three RL seeds, 50 evaluation items each (correct items listed as counts)
NONE = {0: [30, 31, 32], 1: [35, 36, 37]}     # accuracy 0.60 0.62 0.64 | 0.70 0.72 0.74
KL = {0: [32, 33, 33], 1: [38, 37, 39]}       # accuracy 0.64 0.66 0.66 | 0.76 0.74 0.78
N_ITEMS = 50


def _cell(root: Path, div: str, base: int, seed: int, correct: int, sweep=None, extra=None):
    cid = f"arith__dr_grpo__{div}__b{base}__s{seed}__0000000{base}"
    items = "".join("1" if (i * 7 + seed + base) % N_ITEMS < correct else "0"
                    for i in range(N_ITEMS))
    metrics = {"accuracy": {"value": correct / N_ITEMS, "direction": "max"}}
    for k, v in (extra or {}).items():
        metrics[k] = {"value": v, "direction": "none"}
    d = root / cid
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({
        "schema_version": 1, "cell_id": cid, "task": "arith", "algorithm": "dr_grpo",
        "divergence": div, "seed": seed, "base": {"seed": base}, "sweep": sweep or {},
        "status": "completed", "wall_time_s": 1.0, "metrics": metrics,
        "eval": {"n": N_ITEMS, "samples": 0}, "items": {"accuracy": items}}))
    return cid


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_bases")
    for div, table in (("none", NONE), ("kl_k3", KL)):
        for base, counts in table.items():
            for seed, c in enumerate(counts):
                _cell(root, div, base, seed, c)
    (root / "grid.json").write_text(json.dumps({
        "schema_version": 1, "name": "two_bases", "primary_metric": "accuracy",
        "baseline": {"algorithm": "dr_grpo", "divergence": "none"},
        "cells": [{"cell_id": p.name, "task": "arith", "algorithm": "dr_grpo",
                   "divergence": p.name.split("__")[2], "seed": int(p.name.split("__")[4][1:]),
                   "base": int(p.name.split("__")[3][1:]), "sweep": {}}
                  for p in sorted(root.iterdir()) if p.is_dir()]}))
    res = load(root)
    board, _, _ = leaderboards.make_board(res)
    return res, board


def _row(board, div):
    t = board.table
    return t[t["divergence"] == div].iloc[0]


def test_items_are_read_per_cell(two_bases):
    res, _ = two_bases
    assert len(res.items) == 12
    it = res.items[res.cells["cell_id"].iloc[0]]["accuracy"]
    assert it.shape == (N_ITEMS,) and set(np.unique(it)) <= {0, 1}
    assert sorted(res.cells["base"].unique().tolist()) == [0, 1]


def test_golden_variance_components_two_bases_three_seeds(two_bases):
    _, board = two_bases
    r = _row(board, "none")
    # base means 0.62, 0.72, grand mean 0.67; MSB = 3 * (0.05^2 + 0.05^2) / 1 = 0.015;
    # MSW = (0.0008 + 0.0008) / (6 - 2) = 0.0004; n0 = 3
    assert r["accuracy_var_seed"] == pytest.approx(0.0004, abs=1e-12)
    assert r["accuracy_var_base"] == pytest.approx((0.015 - 0.0004) / 3, abs=1e-12)
    assert r["accuracy_mean"] == pytest.approx(0.67) and r["n"] == 6 and r["n_bases"] == 2
    # the base dominates: between-base sd 0.070 against 0.020 between seeds
    k = _row(board, "kl_k3")  # base means 0.6533.., 0.76
    m0, m1 = np.mean([0.64, 0.66, 0.66]), 0.76
    msb = 3 * ((m0 - (m0 + m1) / 2) ** 2 + (m1 - (m0 + m1) / 2) ** 2)
    msw = (np.var([0.64, 0.66, 0.66]) * 3 + np.var([0.76, 0.74, 0.78]) * 3) / 4
    assert k["accuracy_var_seed"] == pytest.approx(msw, abs=1e-12)
    assert k["accuracy_var_base"] == pytest.approx((msb - msw) / 3, abs=1e-12)


def test_two_level_ci_matches_a_naive_nested_bootstrap(two_bases):
    res, board = two_bases
    r = _row(board, "none")
    cells = res.cells[res.cells["divergence"] == "none"].sort_values(["base", "seed"])
    Y = np.vstack([res.items[c]["accuracy"] for c in cells["cell_id"]]).astype(float)
    rng = np.random.default_rng(123)
    stats = []
    for _ in range(20_000):  # bases, then seeds within each drawn base, then items
        bases = rng.integers(0, 2, 2)
        items = rng.integers(0, N_ITEMS, N_ITEMS)
        per_base = [Y[3 * b + rng.integers(0, 3, 3)][:, items].mean() for b in bases]
        stats.append(np.mean(per_base))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    assert (r["accuracy_ci_low"], r["accuracy_ci_high"]) == pytest.approx((lo, hi), abs=0.012)
    # with two bases the interval is wide (the base dominates), far wider than seed noise alone
    assert r["accuracy_ci_high"] - r["accuracy_ci_low"] > 0.1


def test_paired_difference_uses_bases_as_the_unit(two_bases):
    _, board = two_bases
    r = _row(board, "kl_k3")
    # paired by (base, seed): d = .04 .04 .02 | .06 .02 .04 -> per-base means .0333, .04
    d = np.array([0.04, 0.04, 0.02, 0.06, 0.02, 0.04])
    assert r["accuracy_diff"] == pytest.approx(d.mean()) and r["n_pairs"] == 6
    from scipy import stats

    want = stats.ttest_1samp([d[:3].mean(), d[3:].mean()], 0).pvalue
    assert r["accuracy_p_value"] == pytest.approx(want, rel=1e-9)
    assert r["test"] == "paired t over 2 bases"
    assert r["accuracy_diff_ci_low"] < r["accuracy_diff"] < r["accuracy_diff_ci_high"]


def test_design_weights_two_stage_structure():
    w = design_weights([3, 2], 4000, seed=1)
    assert w.shape == (4000, 5) and np.allclose(w.sum(axis=1), 1.0)
    # a base's share is (times drawn) / 2: 0, 1/2 or 1
    assert set(np.round(w[:, :3].sum(axis=1), 12)) <= {0.0, 0.5, 1.0}
    one = design_weights([4], 1000, seed=1)  # one base: seeds only
    assert np.allclose(one.sum(axis=1), 1.0) and set(np.unique(one * 4)) <= set(range(5))
    assert np.array_equal(design_weights([3, 2], 50, 7), design_weights([3, 2], 50, 7))


def test_item_resampling_ci_of_one_cell_matches_binomial_theory():
    y = (np.arange(400) % 10 < 7).astype(float)[None, :]  # 0.7 on 400 items
    reps = hierarchical_replicates(y.mean(axis=1), [1], y, 10_000, 0)
    lo, hi = percentile_ci(reps)
    half = 1.96 * math.sqrt(0.7 * 0.3 / 400)
    assert (lo, hi) == pytest.approx((0.7 - half, 0.7 + half), abs=0.006)
    c = item_counts(400, 10, 0)
    assert c.shape == (10, 400) and np.all(c.sum(axis=1) == 400)


def test_variance_components_edge_cases():
    vb, vw = variance_components(np.array([1.0, 2.0, 3.0]), np.array([0, 0, 0]))
    assert math.isnan(vb) and vw == pytest.approx(1.0)
    vb, vw = variance_components(np.array([1.0, 3.0]), np.array([0, 1]))  # one seed per base
    assert vb == pytest.approx(2.0) and math.isnan(vw)
    vb, vw = variance_components(np.array([1.0, 1.0, 1.2, 1.2]), np.array([0, 0, 1, 1]))
    assert vw == pytest.approx(0.0) and vb == pytest.approx(0.02)


def test_holm_by_hand():
    # sorted p: .01 (x4 = .04), .02 (x3 = .06), .03 (x2 = .06 after the running max), .5 (x1)
    got = holm([0.03, 0.5, np.nan, 0.01, 0.02])
    assert np.allclose(got, [0.06, 0.5, np.nan, 0.04, 0.06], equal_nan=True)
    assert np.isnan(holm([np.nan])).all()


def test_seeds_needed_by_hand():
    z = 1.959963984540054 + 0.8416212335729143
    # var_seed 0.0004, no base variance, 2 bases, diff 0.02: S >= 0.0004 / (2 (0.02/z)^2)
    want = math.ceil(0.0004 / (2 * (0.02 / z) ** 2))
    assert seeds_needed(0.02, 0.0, 0.0004, 2) == want
    assert seeds_needed(0.02, 0.01, 0.0004, 2) == math.inf  # base variance alone too large
    assert seeds_needed(0.0, 0.0, 0.0004, 2) == math.inf
    assert math.isnan(seeds_needed(0.02, 0.0, math.nan, 2))


def test_pass_at_k_items_equal_the_evaluation_estimator():
    from gbmpo.evaluation import pass_at_k
    from leaderboards.tables import _pass_at_k_items

    c = np.array([0, 1, 5, 15, 16])
    for k in (1, 2, 4, 8, 16):
        assert np.allclose(_pass_at_k_items(16, c, k), [pass_at_k(16, int(x), k) for x in c])


def test_matched_budget_table_interpolates_along_each_sweep(tmp_path):
    # Two divergences, each swept over 3 coefficients, 1 base x 2 seeds; accuracy falls and
    # sqrt(KL) shrinks as beta grows. kl_k3: (sqrt KL, acc) = (0.1, .60) (0.2, .70) (0.3, .80);
    # probl2: (0.15, .66) (0.25, .70) (0.35, .74). Common range [0.15, 0.3] -> budgets at 25/50/
    # 75%: 0.1875 -> 0.19, 0.225 (in binary just under) -> 0.22, 0.2625 -> 0.26.
    points = {"kl_k3": [(1.0, 0.3, 40), (10.0, 0.2, 35), (100.0, 0.1, 30)],
              "probl2": [(1.0, 0.35, 37), (10.0, 0.25, 35), (100.0, 0.15, 33)]}
    for div, pts in points.items():
        for beta, sk, correct in pts:
            for seed in (0, 1):
                cid = _cell(tmp_path, f"{div}__beta={beta:g}", 0, seed, correct,
                            sweep={"divergence.beta": beta}, extra={"kl_pi_pi0": sk ** 2})
                data = json.loads((tmp_path / cid / "result.json").read_text())
                data["divergence"] = div
                (tmp_path / cid / "result.json").write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeaderboardWarning)
        s = leaderboards.build(tmp_path, tmp_path / "lb", baseline=None, plots=True)
    b = s.board.budgets
    assert sorted(b["budget"].unique()) == [0.19, 0.22, 0.26]
    k3 = b[b["divergence"] == "kl_k3"].set_index("budget")
    # linear in sqrt KL: acc = 0.5 + sqrt_kl (kl_k3), 0.66 + 0.4 (sqrt_kl - 0.15) (probl2)
    assert k3.loc[0.22, "accuracy"] == pytest.approx(0.5 + 0.22)
    pl = b[b["divergence"] == "probl2"].set_index("budget")
    assert pl.loc[0.22, "accuracy"] == pytest.approx(0.66 + (0.22 - 0.15) * 0.4)
    # paired difference to kl_k3 at each budget, with a bootstrap CI and Holm-adjusted p
    d = pl.loc[0.22, "accuracy_vs_kl_k3"]
    assert d == pytest.approx(0.66 + 0.07 * 0.4 - 0.72, abs=0.01)
    lo, hi = pl.loc[0.22, ["accuracy_vs_kl_k3_ci_low", "accuracy_vs_kl_k3_ci_high"]]
    assert lo <= d <= hi
    assert np.isnan(k3.loc[0.22, "accuracy_vs_kl_k3"])
    md = (tmp_path / "lb" / "matched_budget.md").read_text()
    assert md.count("\n| arith |") == 6
    # each metric keeps its own adjusted p-value column (one shared name once lost accuracy's)
    from leaderboards.render import budget_table
    shown = budget_table(s.board)
    assert "accuracy p (Holm)" in shown.columns
    row = shown[(shown["divergence"] == "probl2") & (shown["√KL budget"] == "0.22")].iloc[0]
    want = pl.loc[0.22, "accuracy_vs_kl_k3_p_adj"]
    assert row["accuracy p (Holm)"] == ("<0.001" if want < 1e-3 else f"{want:.3f}")
    assert (tmp_path / "lb" / "plots" / "arith_frontier.png").is_file()
    # budgets given by hand, and none outside a sweep's range is extrapolated
    from leaderboards.tables import matched_budget_table

    res = load(tmp_path)
    mb = matched_budget_table(res.cells, s.board, res.items, budgets=[0.12, 0.32])
    got = mb.set_index(["divergence", "budget"])["accuracy"]
    assert got[("kl_k3", 0.12)] == pytest.approx(0.62) and np.isnan(got[("kl_k3", 0.32)])
    assert np.isnan(got[("probl2", 0.12)]) and got[("probl2", 0.32)] == pytest.approx(0.728)


def test_sweep_keys_group_cells_and_show_in_tables(tmp_path):
    for beta, correct in product((0.1, 1.0), (30,)):
        for seed in (0, 1):
            _cell(tmp_path, f"kl_k3__beta={beta:g}", 0, seed, correct + int(10 * beta) + seed,
                  sweep={"divergence.beta": beta})
    for p in tmp_path.iterdir():
        data = json.loads((p / "result.json").read_text())
        data["divergence"] = "kl_k3"
        (p / "result.json").write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeaderboardWarning)
        s = leaderboards.build(tmp_path, tmp_path / "lb", plots=False)
    t = s.board.table
    assert s.board.sweep_keys == ["divergence.beta"] and len(t) == 2
    assert sorted(t["divergence.beta"]) == [0.1, 1.0]
    assert "| beta |" in s.markdown
    assert pd.api.types.is_numeric_dtype(t["divergence.beta"])
