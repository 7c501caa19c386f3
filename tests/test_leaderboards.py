"""Leaderboards: statistics, ranks, status handling, bad files, writers, CLI, no torch.

The fixture tree tests/fixtures/leaderboard/grid/ is written by hand (grid "fixture",
baseline dr_grpo/none, primary metric accuracy):

    task  algorithm divergence  seeds: accuracy (response tokens)
    arith dr_grpo   none        0.70 (30), 0.74 (32), 0.72 (31)        baseline
    arith dr_grpo   kl_k3       0.80 (25), 0.84 (27), s2 corrupt result.json -> invalid
    arith grpo      none        0.75 (35), s1 failed (accuracy 0.0), s2 diverged
    arith grpo      kl_k3       0.78 (20), 0.80 (22), s2 in grid.json only -> incomplete
    count dr_grpo   none        0.50 (12), 0.55 (14)                   baseline
    count grpo      kl_k3       0.60 (10), 0.58 (11), s2 timeout (accuracy 0.1)

plus a result from a stale config that grid.json does not list (accuracy 0.99, excluded), a
completed cell whose metrics.jsonl has a broken line in the middle (reported), and the failed
cell's metrics.jsonl ending in half a line (expected of a killed run: not reported).

Golden files in tests/fixtures/leaderboard/golden/ are compared byte for byte. After an
intended change to the output, regenerate them and review the diff:

    GBMPO_UPDATE_GOLDEN=1 python -m pytest tests/test_leaderboards.py -k golden
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import leaderboards
from leaderboards.reading import LeaderboardWarning, load
from leaderboards.stats import bootstrap_ci, bootstrap_draws, rank, welch_ttest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "leaderboard"
RESULTS = FIXTURE / "grid"  # not named "results", which .gitignore files tend to list
GOLDEN = FIXTURE / "golden"
CORRUPT = "arith__dr_grpo__kl_k3__s2__a10275f/result.json"
STALE = "arith__grpo__none__s0__0ldc0nf9/result.json"
BROKEN_LINE = "arith__grpo__kl_k3__s0__a10045f/metrics.jsonl"
HALF_LINE = "arith__grpo__none__s1__a10144f/metrics.jsonl"


def _quiet_build(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeaderboardWarning)
        return leaderboards.build(*args, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("leaderboard")
    return _quiet_build(RESULTS, out, plots=False)


def row(table: pd.DataFrame, task: str, algo: str, div: str) -> pd.Series:
    sel = table[(table["task"] == task) & (table["algorithm"] == algo)
                & (table["divergence"] == div)]
    assert len(sel) == 1, f"expected one row for {task}/{algo}/{div}, got {len(sel)}"
    return sel.iloc[0]


# --- golden files ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["leaderboard.md", "leaderboard.csv", "seeds.csv",
                                  "curves.csv"])
def test_golden(built, name):
    got = (built.out_dir / name).read_text(encoding="utf-8")
    golden = GOLDEN / name
    if os.environ.get("GBMPO_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        golden.write_text(got, encoding="utf-8")
        pytest.skip(f"rewrote {golden}; review the diff")
    assert golden.exists(), f"{golden} missing; run with GBMPO_UPDATE_GOLDEN=1 to create it"
    assert got == golden.read_text(encoding="utf-8"), (
        f"{name} differs from {golden}; if the change is intended, regenerate (module docstring)")


# --- statistics -----------------------------------------------------------------------------

def test_ci_equals_hand_computed_values(built):
    t = built.board.table
    # n = 2, values a < b: the bootstrap mean is a, (a+b)/2 or b with prob 1/4, 1/2, 1/4, so
    # with 10,000 resamples the 2.5% and 97.5% percentiles are exactly a and b.
    r = row(t, "arith", "dr_grpo", "kl_k3")
    assert (r["accuracy_ci_low"], r["accuracy_ci_high"]) == pytest.approx((0.80, 0.84), abs=1e-12)
    r = row(t, "count", "grpo", "kl_k3")
    assert (r["accuracy_ci_low"], r["accuracy_ci_high"]) == pytest.approx((0.58, 0.60), abs=1e-12)
    # n = 3 (0.70, 0.74, 0.72): all three draws equal to the minimum has prob 1/27 > 2.5%.
    r = row(t, "arith", "dr_grpo", "none")
    assert (r["accuracy_ci_low"], r["accuracy_ci_high"]) == pytest.approx((0.70, 0.74), abs=1e-12)
    assert r["accuracy_mean"] == pytest.approx(0.72)
    assert r["accuracy_std"] == pytest.approx(np.std([0.70, 0.74, 0.72], ddof=1))
    # n = 1: no interval
    r = row(t, "arith", "grpo", "none")
    assert np.isnan(r["accuracy_ci_low"]) and np.isnan(r["accuracy_ci_high"])


def test_bootstrap_matches_naive_resampling():
    rng = np.random.default_rng(7)
    samples = [rng.normal(0.7, 0.05, n) for n in (2, 3, 5, 5, 10, 17)] + [np.array([0.5])]
    lo, hi = bootstrap_ci(samples, n_boot=2000, level=0.9, seed=3)
    for x, a, b in zip(samples[:-1], lo[:-1], hi[:-1], strict=True):
        means = x[bootstrap_draws(len(x), 2000, 3)].mean(axis=1)
        want = np.percentile(means, [5, 95])
        assert (a, b) == pytest.approx(tuple(want), abs=1e-12)
    assert np.isnan(lo[-1]) and np.isnan(hi[-1])
    # Seeded: same answer twice; another seed moves it.
    assert np.array_equal(bootstrap_ci(samples, seed=1)[0], bootstrap_ci(samples, seed=1)[0],
                          equal_nan=True)
    assert not np.allclose(bootstrap_ci(samples, seed=1)[0][:-1],
                           bootstrap_ci(samples, seed=2)[0][:-1])


def test_bootstrap_ci_is_close_to_normal_theory_for_large_n():
    x = np.random.default_rng(0).normal(0.6, 0.1, 400)
    (lo,), (hi,) = bootstrap_ci([x])
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_comparisons_are_paired_by_seed_and_holm_adjusted(built):
    t = built.board.table
    # count grpo/kl_k3 seeds 0, 1 (0.60, 0.58) against the baseline's (0.50, 0.55): paired
    want = stats.ttest_rel([0.60, 0.58], [0.50, 0.55]).pvalue
    r = row(t, "count", "grpo", "kl_k3")
    assert r["accuracy_p_value"] == pytest.approx(want, rel=1e-10)
    assert r["accuracy_diff"] == pytest.approx(0.065) and r["n_pairs"] == 2
    assert r["test"] == "paired t over 2 seeds"
    # arith dr_grpo/kl_k3 (0.80, 0.84) against (0.70, 0.74) by seed: the same +0.10 twice, a
    # zero-variance paired difference, so no p-value rather than a spurious 1e-16
    r = row(t, "arith", "dr_grpo", "kl_k3")
    assert r["accuracy_diff"] == pytest.approx(0.10) and np.isnan(r["accuracy_p_value"])
    assert r["p_note"] == "zero variance"
    # one completed seed: too few pairs, an unpaired comparison with a note, not a number
    r = row(t, "arith", "grpo", "none")
    assert np.isnan(r["accuracy_p_value"]) and r["p_note"] == "n<2"
    assert r["accuracy_diff"] == pytest.approx(0.03) and r["test"] == "Welch (unpaired)"
    base = row(t, "arith", "dr_grpo", "none")
    assert base["is_baseline"] and base["p_note"] == "baseline"
    # Holm across every comparison of the table
    raw = t["accuracy_p_value"].to_numpy(float)
    from leaderboards.stats import holm

    assert np.allclose(t["accuracy_p_adj"], holm(raw), equal_nan=True)


def test_vectorised_welch_equals_scipy_elementwise():
    rng = np.random.default_rng(1)
    pairs = [(rng.normal(0, 1, n1), rng.normal(0.3, 2, n2)) for n1, n2 in
             [(2, 2), (3, 7), (10, 4), (25, 30)]]
    summ = [(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b)) for a, b in pairs]
    t, p = welch_ttest(*map(np.array, zip(*summ, strict=True)))
    for (a, b), ti, pi in zip(pairs, t, p, strict=True):
        ref = stats.ttest_ind(a, b, equal_var=False)
        assert (ti, pi) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10)
    # zero variance on both sides and n < 2: NaN
    assert np.isnan(welch_ttest(1.0, 0.0, 3, 0.5, 0.0, 3)[1])
    assert np.isnan(welch_ttest(1.0, 0.1, 1, 0.5, 0.1, 3)[1])


# --- ranks ------------------------------------------------------------------------------------

def test_rank_direction_and_ties():
    v = pd.Series([0.3, 0.9, 0.5, 0.9, np.nan])
    assert rank(v, "max").tolist() == [4, 1, 3, 1, pd.NA]
    assert rank(v, "min").tolist() == [1, 3, 2, 3, pd.NA]
    assert rank(v, "none").isna().all()
    by = pd.Series(["a", "a", "b", "b", "b"])
    assert rank(v, "min", by).tolist() == [1, 2, 1, 2, pd.NA]
    with pytest.raises(ValueError, match="max, min or none"):
        rank(v, "up")


def test_fixture_ranks_follow_each_metric_direction(built):
    t = built.board.table
    arith = t[t["task"] == "arith"]
    by_acc = arith.sort_values("accuracy_rank")[["algorithm", "divergence"]]
    assert [tuple(x) for x in by_acc.to_numpy()] == [
        ("dr_grpo", "kl_k3"), ("grpo", "kl_k3"), ("grpo", "none"), ("dr_grpo", "none")]
    # response_tokens_mean has direction "min": fewest tokens is rank 1
    by_tok = arith.sort_values("response_tokens_mean_rank")[["algorithm", "divergence"]]
    assert [tuple(x) for x in by_tok.to_numpy()] == [
        ("grpo", "kl_k3"), ("dr_grpo", "kl_k3"), ("dr_grpo", "none"), ("grpo", "none")]
    assert "reg_pg_ratio_rank" not in t  # direction "none": reported, not ranked
    assert row(t, "count", "grpo", "kl_k3")["accuracy_rank"] == 1  # ranked within its task


def test_min_metric_as_primary_puts_lowest_first(tmp_path):
    s = _quiet_build(RESULTS, tmp_path, metric="response_tokens_mean", plots=False)
    arith = s.board.table[s.board.table["task"] == "arith"]
    assert arith["response_tokens_mean_mean"].tolist() == [21.0, 26.0, 31.0, 35.0]
    assert arith["response_tokens_mean_rank"].tolist() == [1, 2, 3, 4]
    assert "lower is better" in s.markdown


# --- statuses and bad files -------------------------------------------------------------------

def test_failed_diverged_timeout_incomplete_are_flagged_not_averaged(built):
    t = built.board.table
    r = row(t, "arith", "grpo", "none")  # the failed seed reports accuracy 0.0
    assert (r["accuracy_mean"], r["n"], r["n_failed"], r["n_diverged"]) == (0.75, 1, 1, 1)
    assert r["flags"] == "1 failed, 1 diverged"
    r = row(t, "arith", "grpo", "kl_k3")
    assert (r["n"], r["n_incomplete"], r["flags"]) == (2, 1, "1 incomplete")
    r = row(t, "count", "grpo", "kl_k3")  # the timed-out seed reports accuracy 0.1
    assert r["accuracy_mean"] == pytest.approx(0.59) and r["flags"] == "1 timeout"
    seeds = built.seeds
    assert seeds["status"].value_counts().to_dict() == {
        "completed": 12, "failed": 1, "diverged": 1, "timeout": 1, "incomplete": 1,
        "invalid": 1}
    md = built.markdown
    for flag in ("1 failed, 1 diverged", "1 incomplete", "1 timeout", "1 invalid"):
        assert f"| {flag} |" in md


def test_corrupt_and_stale_results_are_reported_by_path_and_excluded():
    with pytest.warns(LeaderboardWarning, match=CORRUPT.replace(".", r"\.")):
        res = load(RESULTS)
    by_path = {p.path: p.message for p in res.problems}
    assert set(by_path) == {CORRUPT, STALE, BROKEN_LINE}
    assert "not valid JSON" in by_path[CORRUPT]
    assert "not in grid.json" in by_path[STALE]
    assert "1 unreadable line(s) skipped (line 3)" in by_path[BROKEN_LINE]
    cells = res.cells.set_index("cell_id")
    assert cells.loc[CORRUPT.split("/")[0], "status"] == "invalid"
    assert 0.99 not in res.cells["accuracy"].tolist()  # the stale cell's value
    assert len(res.cells) == 17  # exactly the manifest's cells; the stale one is not a row
    assert len(res.curves[res.curves["cell_id"] == HALF_LINE.split("/")[0]]) == 1
    assert len(res.curves[res.curves["cell_id"] == BROKEN_LINE.split("/")[0]]) == 4


BASE = {"schema_version": 1, "cell_id": "t__a__d__s0__00000000", "task": "t", "algorithm": "a",
        "divergence": "d", "seed": 0, "status": "completed", "wall_time_s": 1.0,
        "metrics": {"accuracy": {"value": 0.5, "direction": "max"}}}


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 2}, "schema_version is 2"),
    ({"seed": "zero"}, "'seed' must be an integer"),
    ({"task": None}, "'task' must be a non-empty string"),
    ({"status": "done"}, "status 'done' is not one of"),
    ({"cell_id": "other"}, "does not match its directory"),
    ({"metrics": {"accuracy": 0.5}}, "must be an object with 'value' and 'direction'"),
    ({"metrics": {"accuracy": {"value": 0.5, "direction": "up"}}}, "direction 'up'"),
    ({"metrics": {"accuracy": {"value": "high", "direction": "max"}}}, "must be a number"),
    ({"metrics": {"status": {"value": 1.0, "direction": "max"}}}, "clashes"),
])
def test_malformed_result_is_excluded_with_its_reason(tmp_path, change, message):
    good = tmp_path / "t__a__d__s1__00000000"
    good.mkdir()
    (good / "result.json").write_text(json.dumps({**BASE, "cell_id": good.name, "seed": 1}))
    bad = tmp_path / BASE["cell_id"]
    bad.mkdir()
    (bad / "result.json").write_text(json.dumps({**BASE, **change}))
    with pytest.warns(LeaderboardWarning):
        res = load(tmp_path)
    assert [p.path for p in res.problems] == [f"{bad.name}/result.json"]
    assert message in res.problems[0].message
    assert res.cells["cell_id"].tolist() == [good.name]


def test_without_manifest_baseline_comes_from_the_caller(tmp_path):
    for d in ("arith__dr_grpo__none__s0__a10074f", "arith__dr_grpo__none__s1__a10174f",
              "arith__grpo__kl_k3__s0__a10045f", "arith__grpo__kl_k3__s1__a10145f"):
        shutil.copytree(RESULTS / d, tmp_path / "res" / d)
    with pytest.warns(LeaderboardWarning, match="line 3"):
        s = leaderboards.build(tmp_path / "res", plots=False)
    assert s.out_dir == tmp_path / "res" / "leaderboard"
    assert [p.path for p in s.problems] == [BROKEN_LINE]
    assert "Δ vs baseline" not in s.markdown and s.board.table["accuracy_p_value"].isna().all()
    s = _quiet_build(tmp_path / "res", baseline="grpo:kl_k3", plots=False)
    r = row(s.board.table, "arith", "dr_grpo", "none")
    assert r["accuracy_diff"] == pytest.approx(0.72 - 0.79)
    with pytest.raises(ValueError, match="available: dr_grpo:none, grpo:kl_k3"):
        _quiet_build(tmp_path / "res", baseline="ppo:none", plots=False)
    with pytest.raises(ValueError, match="must be ALGORITHM:DIVERGENCE"):
        _quiet_build(tmp_path / "res", baseline="grpo", plots=False)


# --- tables and writers -----------------------------------------------------------------------

def test_learning_curves_average_completed_seeds_only(built):
    c = built.curves.set_index(["task", "algorithm", "divergence", "step"])
    assert c.loc[("arith", "dr_grpo", "none", 2), "eval_accuracy"] == pytest.approx(0.72)
    assert c.loc[("arith", "dr_grpo", "none", 2), "eval_n"] == 2
    assert c.loc[("arith", "dr_grpo", "none", 1), "train_reward_mean"] == pytest.approx(0.6)
    assert "none" not in set(c.loc["arith"].xs("grpo", level="algorithm").reset_index()
                             ["divergence"])  # the failed seed's curve is not shown


def test_all_formats_written(built):
    names = sorted(p.name for p in built.files)
    assert names == ["curves.csv", "leaderboard.csv", "leaderboard.html", "leaderboard.md",
                     "leaderboard.tex", "report.html", "seeds.csv"]
    html = (built.out_dir / "leaderboard.html").read_text()
    assert html.count("<tr>") == 1 + len(built.board.table) and CORRUPT in html
    tex = (built.out_dir / "leaderboard.tex").read_text()
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert len(rows) == len(built.board.table)
    assert {ln.count("&") for ln in rows} == {15}  # 16 columns on every row
    assert r"dr\_grpo" in tex and r"0.820 $\pm$ 0.028" in tex


def test_plots_are_pngs(tmp_path):
    s = _quiet_build(RESULTS, tmp_path, plots=True)
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["arith_accuracy_ci.png", "arith_accuracy_vs_length.png",
                    "arith_learning_curves.png", "count_accuracy_ci.png",
                    "count_accuracy_vs_length.png"]  # count has no metrics.jsonl
    for p in pngs:
        data = (tmp_path / "plots" / p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert len(s.files) == 7 + len(pngs)  # six tables, report.html, the plots


# --- command line and imports -----------------------------------------------------------------

def _cli(argv):
    from gbmpo.commands import leaderboard as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return cmd.run(parser.parse_args(argv))


def test_cli_prints_table_and_problems(tmp_path, capsys):
    assert _cli([str(RESULTS), "--out", str(tmp_path), "--no-plots"]) == 0
    out, err = capsys.readouterr()
    assert "| # | task | algorithm |" in out and f"wrote 7 files to {tmp_path}" in out
    assert "3 file(s) excluded or only partly read" in err and CORRUPT in err
    assert _cli([str(RESULTS), "--out", str(tmp_path), "--no-plots", "--strict"]) == 1
    capsys.readouterr()
    assert _cli([str(RESULTS), "--out", str(tmp_path), "--metric", "acc"]) == 2
    assert "available: accuracy, reg_pg_ratio, response_tokens_mean" in capsys.readouterr().err
    assert _cli([str(tmp_path / "nope"), "--no-plots"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _cli([str(tmp_path / "empty"), "--no-plots"]) == 2
    assert "no cells under" in capsys.readouterr().err


def test_torch_free_and_cheap_imports(tmp_path):
    code = (
        "import sys\n"
        "import gbmpo.commands.leaderboard\n"
        "assert 'pandas' not in sys.modules, 'the command module must import cheaply'\n"
        "from leaderboards.cli import main\n"
        f"rc = main([{str(RESULTS)!r}, '--out', {str(tmp_path)!r}, '--no-plots'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'leaderboards imported torch'\n"
        "assert 'gbmpo.trainer' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "leaderboard.md").exists()


def test_perf_bench_generator_smoke(tmp_path):
    from bench.perf.leaderboard import generate

    n = generate(tmp_path, n_cells=60, n_seeds=3)
    with pytest.warns(LeaderboardWarning):
        res = load(tmp_path)
    assert n == 60 and len(res.problems) == 1  # the one deliberately corrupt file
    assert (res.cells["status"] != "invalid").sum() == len(res.cells) - 1
    board, _, curves = leaderboards.make_board(res)
    assert board.table["n_completed"].sum() + board.table["n_failed"].sum() \
        + board.table["n_diverged"].sum() == 59
    assert not curves.empty
