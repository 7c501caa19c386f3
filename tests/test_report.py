"""report.html: one self-contained page with every group, its cells, configs, logs and plots.

Unit tests read the page's embedded data and markup; tests/test_report_browser.py opens it in
Chromium. `write_grid` writes a synthetic results directory (also used there and by the
10,000-cell measurement: `pytest tests/test_report.py -m slow -s`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from leaderboards.reading import LeaderboardWarning, load
from leaderboards.report import place_plot, read_cell_files, render_report, write_report
from leaderboards.report_data import group_keys, round_sig, view_columns
from leaderboards.writing import make_board

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "results" / "tiny"
FAILED_REASON = "exited with code 1 (cell process)"
LAST_LOG_LINE = "RuntimeError: CUDA error: out of memory (step 7)"


# ---- a synthetic results directory ---------------------------------------------------------

def write_grid(root: Path, *, tasks=("arith",), algorithms=("dr_grpo", "grpo"),
               divergences=("none", "kl_k3"), seeds=(0, 1, 2), bases=(0,), steps: int = 12,
               evals: int = 3, failed=(), diverged=(), incomplete=(), sweep=None,
               rng_seed: int = 0) -> Path:
    """Write grid.json and one cell directory per (task, algorithm, divergence, seed, base).

    failed / diverged / incomplete: sets of (algorithm, divergence, seed). A failed cell's
    result.json carries `log_tail` (as the grid runner writes it); a diverged cell has only a
    log.txt; an incomplete cell has only config.toml and log.txt (a run killed mid-way).
    sweep: (config key, {divergence: values}) adds a swept key to those divergences' cells.
    """
    rng = np.random.default_rng(rng_seed)
    root.mkdir(parents=True, exist_ok=True)
    skey, swept = sweep or ("", {})
    cells = []
    for task in tasks:
        for a in algorithms:
            for d in divergences:
                for value in swept.get(d, [None]):
                    for b in bases:
                        for s in seeds:
                            name = f"{task}/{a}/{d}/{value}/{b}/{s}"
                            h = hashlib.sha1(name.encode()).hexdigest()[:8]
                            c = {"cell_id": f"{task}__{a}__{d}__s{s}__{h}", "task": task,
                                 "algorithm": a, "divergence": d, "seed": s, "base": b}
                            if value is not None:
                                c["sweep"] = {skey: value}
                            cells.append(c)
    for c in cells:
        key = (c["algorithm"], c["divergence"], c["seed"])
        cdir = root / c["cell_id"]
        cdir.mkdir(exist_ok=True)
        config = {"run": {"seed": c["seed"], "steps": steps, "device": "cpu"},
                  "pretrain": {"seed": c["base"]},
                  "task": {"name": c["task"], "params": {}},
                  "algorithm": {"name": c["algorithm"], "params": {}},
                  "divergence": {"name": c["divergence"], "beta": 0.04, "params": {}},
                  "optim": {"lr": 5e-5, "betas": [0.9, 0.999]}}
        for k, v in c.get("sweep", {}).items():  # a swept value is in the resolved config
            *path, leaf = k.split(".")
            node = config
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = v
        acc = float(np.clip(0.7 + 0.05 * (c["algorithm"] == "grpo")
                            + 0.02 * rng.standard_normal(), 0, 1))
        rows = [{"kind": "train", "step": i + 1, "reward_mean": round(acc * i / steps, 4)}
                for i in range(steps)]
        rows += [{"kind": "eval", "step": i * steps // max(evals - 1, 1),
                  "accuracy": round(0.6 + (acc - 0.6) * i / max(evals - 1, 1), 4)}
                 for i in range(evals)]
        (cdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if key in incomplete:
            (cdir / "config.toml").write_text(
                f'[run]\nseed = {c["seed"]}\n\n[divergence]\nname = "{c["divergence"]}"\n'
                "beta = 0.04\n")
            (cdir / "log.txt").write_text("step 1\nstep 2\nkilled mid-run\n")
            continue
        result = {"schema_version": 1, **c, "grid": "synthetic", "status": "completed",
                  "base": {"seed": c["base"]},
                  "reason": None, "diverged_step": None,
                  "metrics": {"accuracy": {"value": round(acc, 4), "direction": "max"},
                              "response_tokens_mean": {"value": 20 + 5 * rng.random(),
                                                       "direction": "min"}},
                  "wall_time_s": round(40 + rng.random(), 2),
                  "provenance": {"git_hash": "0123456789abcdef", "git_dirty": True},
                  "config": config}
        if key in failed:
            result.update(status="failed", reason=FAILED_REASON, metrics={},
                          log_tail="\n".join([f"step {i}" for i in range(1, 7)]
                                             + [LAST_LOG_LINE]))
        elif key in diverged:
            result.update(status="diverged", reason="loss is nan", diverged_step=5)
            (cdir / "log.txt").write_text("step 4 loss 0.1\nstep 5 loss nan\n")
        (cdir / "result.json").write_text(json.dumps(result, indent=1))
    manifest = {"schema_version": 1, "name": "synthetic", "primary_metric": "accuracy",
                "baseline": {"algorithm": algorithms[0], "divergence": divergences[0]},
                "cells": cells}
    (root / "grid.json").write_text(json.dumps(manifest))
    return root


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page,
                  re.S)
    assert m, "the page has no embedded data block"
    return json.loads(m[1])


def steps_of(series: list) -> list:
    """The steps of a [steps, values] curve; evenly spaced steps are {"s": first, "d": stride}."""
    x = series[0]
    return x if isinstance(x, list) else [x["s"] + i * x["d"] for i in range(len(series[1]))]


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="sec-{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid!r} in the page"
    return m[1]


def build(results_dir: Path, tmp: Path | None = None, **kw):
    """load + make_board (+ write_plots into tmp) + render_report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeaderboardWarning)
        results = load(results_dir)
    board, seeds, curves = make_board(results, n_boot=500)
    plots = None
    if tmp is not None:
        from leaderboards.plots import write_plots

        plots = write_plots(board, curves, tmp / "plots", "accuracy")
    return results, board, seeds, curves, plots, render_report(
        results, board, seeds, curves, plots=plots, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(TINY, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = write_grid(tmp_path_factory.mktemp("synthetic") / "grid",
                      failed={("grpo", "kl_k3", 1)}, diverged={("grpo", "none", 2)},
                      incomplete={("dr_grpo", "kl_k3", 2)})
    return build(root)


# ---- self-contained --------------------------------------------------------------------------

NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def test_page_is_self_contained(tiny):
    page = tiny[-1]
    assert not re.search(r"""\b(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", page, re.I)
    assert not re.search(r"<script[^>]+\bsrc=|<link[^>]+stylesheet|@import", page, re.I)
    assert not re.search(r"\bfetch\(|XMLHttpRequest|WebSocket|\bimport\(|sendBeacon", page)
    # Any absolute URL left is an XML namespace name, which nothing fetches.
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= NAMESPACES
    assert "default-src 'none'" in page  # and the browser would refuse a request anyway


def test_every_group_row_with_its_cells_and_the_baseline_marked(tiny):
    results, board, seeds, _, _, page = tiny
    data = page_data(page)
    t = data["tables"][0]
    assert data["keys"] == ["task", "algorithm", "divergence"]
    got = [tuple(r[t["cols"].index(k)] for k in data["keys"]) for r in t["rows"]]
    assert got == list(board.table[data["keys"]].itertuples(index=False, name=None))
    base = [r for r in t["rows"] if r[t["baseline"]]]
    assert [(r[1], r[2]) for r in base] == [("dr_grpo", "none")]
    ids = [r[data["cells"]["cols"].index("cell_id")] for r in data["cells"]["rows"]]
    for r, cell_idx in zip(t["rows"], t["cells"], strict=True):
        want = seeds.loc[(seeds["algorithm"] == r[1]) & (seeds["divergence"] == r[2]),
                         "cell_id"]
        assert sorted(ids[i] for i in cell_idx) == sorted(want)
    assert all(c is not None and len(c[0][1]) > 1 for c in t["curves"])  # mean eval curve
    # every cell has its own curve: train reward at steps 1..15, eval accuracy
    for c in data["cells"]["curve"]:
        assert steps_of(c[0]) == list(range(1, 16)) and len(c[0][1]) == 15
        assert steps_of(c[1])[0] == 0 and len(c[1][1]) >= 2
    assert data["baseline"] == ["dr_grpo", "none"]


def test_plots_are_inlined_next_to_their_table(tiny):
    *_, plots, page = tiny
    # the committed grid carries the yardstick, so the frontier, pass@k and forgetting plots too
    assert sorted(p.stem for p in plots) == [
        "arith_accuracy_ci", "arith_accuracy_vs_length", "arith_forgetting_reverse",
        "arith_frontier", "arith_learning_curves", "arith_pass_at_k"]
    for p in plots:
        assert base64.b64encode(p.read_bytes()).decode() in page, p.name
    assert 'alt="arith_accuracy_ci"' in section(page, "board")
    assert 'alt="arith_learning_curves"' in section(page, "curves")
    assert 'alt="arith_accuracy_vs_length"' in section(page, "plots")
    assert 'data-task="arith"' in section(page, "board")


def test_svg_plots_inline_with_unique_ids_and_scoped_style(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name in ("arith_kl_frontier.svg", "arith_pass_at_k.svg"):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], marker="o")
        fig.savefig(tmp_path / name)
        plt.close(fig)
        paths.append(tmp_path / name)
    results, board, seeds, curves, _, _ = build(TINY)
    budget = board.table[["task", "algorithm", "divergence", "accuracy_mean"]]
    page = render_report(results, board, seeds, curves,
                         extra_tables={"Matched budget: KL(π‖π₀) = 0.05": budget}, plots=paths)
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page and "<metadata" not in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "ids collide between inlined figures"
    assert "fig0-" in section(page, "t1")  # the frontier plot beside the matched-budget table
    assert "fig1-" in section(page, "plots")  # no pass@k table: the plots section
    styles = re.findall(r"<style[^>]*>(.*?)</style>", page, re.S)[1:]  # the figures' own
    assert styles and all(re.match(r"\s*#fig\d ", s) for s in styles)


# ---- cells: status, reason, log, config ------------------------------------------------------

def cell_record(data: dict, algo: str, div: str, seed: int) -> dict:
    c = data["cells"]
    for i, r in enumerate(c["rows"]):
        rec = dict(zip(c["cols"], r, strict=True))
        if f"__{algo}__{div}__s{seed}__" in rec["cell_id"]:
            return {**rec, "log": c["log"][i], "cfg": c["cfg"][i], "curve": c["curve"][i],
                    "git": c["git"][i]}
    raise AssertionError(f"no cell {algo}/{div}/s{seed}")


def test_failed_diverged_and_incomplete_cells_show_reason_and_log_tail(synthetic):
    page = synthetic[-1]
    data = page_data(page)
    failed = cell_record(data, "grpo", "kl_k3", 1)
    assert failed["status"] == "failed" and failed["reason"] == FAILED_REASON
    assert failed["log"].splitlines()[-1] == LAST_LOG_LINE
    div = cell_record(data, "grpo", "none", 2)
    assert (div["status"], div["reason"], div["diverged_step"]) == ("diverged", "loss is nan", 5)
    assert div["log"].splitlines()[-1] == "step 5 loss nan"  # from log.txt
    inc = cell_record(data, "dr_grpo", "kl_k3", 2)
    assert inc["status"] == "incomplete" and inc["log"].endswith("killed mid-run")
    assert {**data["cells"]["cfg_common"], **inc["cfg"]}["divergence.beta"] == 0.04  # config.toml
    done = cell_record(data, "dr_grpo", "none", 0)
    assert done["log"] is None and done["git"] == "0123456789+dirty"
    # the flags of the group with the failed cell say so, and the page is still one file
    t = data["tables"][0]
    flags = {(r[1], r[2]): r[t["cols"].index("flags")] for r in t["rows"]}
    assert flags[("grpo", "kl_k3")] == "1 failed"
    assert LAST_LOG_LINE in json.dumps(data, ensure_ascii=False)


def dotted(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(dotted(v, f"{prefix}{k}.") if isinstance(v, dict) and v else
                   {f"{prefix}{k}": v})
    return out


def test_config_is_split_into_common_and_per_cell_keys_without_loss(tiny):
    results, _, seeds, _, _, page = tiny
    data = page_data(page)
    common = data["cells"]["cfg_common"]
    assert common["rollout.samples_per_prompt"] == 8 and "divergence.name" not in common
    for i, rel in enumerate(seeds["path"]):
        full = json.loads((results.root / rel).read_text())["config"]
        assert {**common, **data["cells"]["cfg"][i]} == dotted(full)
    # the committed grid varies the RL seed, the base (its pretraining seed) and the divergence
    assert set(data["cells"]["cfg"][0]) == {"run.seed", "pretrain.seed", "divergence.name",
                                            "divergence.beta"}


def test_read_cell_files_tolerates_missing_files(tmp_path):
    configs, logs, gits = read_cell_files(tmp_path, ["nope/result.json"], ["incomplete"])
    assert (configs, logs, gits) == ([None], [None], [None])


# ---- generic over the board's columns ---------------------------------------------------------

def test_view_columns_fold_ci_std_and_adjusted_p_and_keep_new_keys(tiny):
    board = tiny[1]
    t = board.table.copy()
    t.insert(3, "beta", 0.04)  # a swept config key beside the others
    t["accuracy_p_adj"] = np.minimum(t["accuracy_p_value"] * 4, 1.0)
    t["accuracy_diff_ci_low"], t["accuracy_diff_ci_high"] = t["accuracy_diff"] - .01, .0
    t["kl_mean"], t["kl_ci_low"], t["kl_ci_high"] = 0.1, 0.05, 0.2
    # without a `keys` attribute: the leading columns before the first `<primary>_` one
    keys = group_keys(SimpleNamespace(table=t, primary="accuracy"))
    assert keys == ["task", "algorithm", "divergence", "beta"]
    assert group_keys(SimpleNamespace(table=t, primary="accuracy", keys=keys[:3])) == keys[:3]
    view = view_columns(t, keys, "accuracy", {"accuracy": "max", "kl": "min"})
    by = {v["label"]: v for v in view}
    cols = list(t.columns)
    assert by["accuracy"]["std"] == cols.index("accuracy_std")
    assert (by["accuracy"]["lo"], by["accuracy"]["hi"]) == (cols.index("accuracy_ci_low"),
                                                            cols.index("accuracy_ci_high"))
    assert by["Δ accuracy"]["p"] == cols.index("accuracy_p_adj")  # adjusted p decides
    assert by["Δ accuracy"]["lo"] == cols.index("accuracy_diff_ci_low")
    assert by["p adj."]["sig"] and not by["p"]["sig"]
    assert by["p"]["note"] == cols.index("p_note")
    assert by["kl"]["lo"] == cols.index("kl_ci_low") and by["kl"]["dir"] == "min"
    assert by["beta"]["kind"] == "key" and by["#"]["kind"] == "rank"
    assert by["n_failed"]["hidden"] and not by["n"].get("hidden")
    shown = {cols[v["c"]] for v in view}
    assert not shown & {"accuracy_std", "accuracy_ci_low", "is_baseline", "p_note",
                        "kl_ci_high"}
    with pytest.raises(ValueError, match=r"\['bogus'\] are not columns"):
        group_keys(SimpleNamespace(table=t, primary="accuracy"), ["task", "bogus"])


def budget_table(board) -> pd.DataFrame:
    """A table shaped like `matched_budget_table`'s: values at drift budgets with CIs, and
    differences to a reference divergence with raw and Holm-adjusted p-values."""
    t = board.table[["task", "algorithm", "divergence"]]
    n = len(t)
    rng = np.random.default_rng(0)
    return t.assign(budget=0.1, points=3, accuracy=0.8, accuracy_ci_low=0.75,
                    accuracy_ci_high=0.85, accuracy_vs_kl_k3=rng.normal(0, 0.05, n),
                    accuracy_vs_kl_k3_ci_low=-0.1, accuracy_vs_kl_k3_ci_high=0.1,
                    accuracy_vs_kl_k3_p=np.linspace(0.001, 0.5, n),
                    accuracy_vs_kl_k3_p_adj=np.linspace(0.004, 1.0, n))


def test_view_columns_of_a_matched_budget_table(tiny):
    t = budget_table(tiny[1])
    view = view_columns(t, ["task", "algorithm", "divergence"], "accuracy", {"accuracy": "max"})
    cols = list(t.columns)
    by = {v["label"]: v for v in view}
    assert [v["label"] for v in view] == [
        "task", "algorithm", "divergence", "budget", "points", "accuracy", "accuracy_vs_kl_k3",
        "p accuracy_vs_kl_k3", "p adj. accuracy_vs_kl_k3"]  # the table's own order
    d = by["accuracy_vs_kl_k3"]
    assert (d["kind"], d["dir"], d["p"]) == ("diff", "max", cols.index("accuracy_vs_kl_k3_p_adj"))
    assert d["lo"] == cols.index("accuracy_vs_kl_k3_ci_low")
    assert by["p adj. accuracy_vs_kl_k3"]["sig"] and not by["p accuracy_vs_kl_k3"]["sig"]
    assert by["p accuracy_vs_kl_k3"]["d"] == cols.index("accuracy_vs_kl_k3")
    assert by["accuracy"]["lo"] == cols.index("accuracy_ci_low")
    # `top_p` is no p-value when there is no `top` column
    assert view_columns(t.assign(top_p=0.9), [], "accuracy", {})[-1]["kind"] == "num"


def test_round_sig_prints_short_and_maps_non_finite_to_null():
    got = round_sig(np.array([0.84830001, 12345.678, 1.58e-8, -0.0123456, 0.0, np.nan, np.inf,
                              0.1 + 0.2]), 4)
    assert got == [0.8483, 12350.0, 1.58e-08, -0.01235, 0.0, None, None, 0.3]
    assert json.dumps(got) == "[0.8483, 12350.0, 1.58e-08, -0.01235, 0.0, null, null, 0.3]"


def test_plot_placement_rules():
    tables = [("Matched budget at KL 0.05", "t1"), ("pass@k", "t2")]
    ignore = {"arith", "accuracy"}
    assert place_plot("arith_accuracy_ci", tables, ignore) == "board"
    assert place_plot("arith_learning_curves", tables, ignore) == "curves"
    assert place_plot("arith_frontier", tables, ignore) == "t1"
    assert place_plot("arith_pass_at_k", tables, ignore) == "t2"
    assert place_plot("arith_accuracy_vs_length", tables, ignore) == "plots"
    assert place_plot("arith_frontier", [], ignore) == "plots"


def test_extra_cell_columns_such_as_base_are_shown_per_cell(tiny):
    results, board, seeds, curves, _, _ = tiny
    seeds = seeds.assign(base=[f"b{i % 3}" for i in range(len(seeds))])
    data = page_data(render_report(results, board, seeds, curves))
    assert data["cells"]["extras"] == ["base"]
    assert data["cells"]["cols"][:3] == ["cell_id", "seed", "base"]


def test_write_report_is_atomic(tiny, tmp_path):
    results, board, seeds, curves, plots, page = tiny
    path = write_report(tmp_path / "out" / "report.html", results, board, seeds, curves,
                        plots=plots)
    assert path.read_text(encoding="utf-8") == page
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_a_plot_that_cannot_be_inlined_is_named(tiny, tmp_path):
    results, board, seeds, curves, *_ = tiny
    (tmp_path / "arith_x.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(ValueError, match=r"arith_x\.pdf.*accepted: \.svg, \.png"):
        render_report(results, board, seeds, curves, plots=[tmp_path / "arith_x.pdf"])


# ---- 10,000 cells ------------------------------------------------------------------------------

@pytest.mark.slow
def test_ten_thousand_cells_build_in_seconds(tmp_path):
    """Prints the page size and build time quoted in leaderboards/report.py's docstring."""
    fail = {(f"a{i % 5}", f"d{7 * i % 100}", i % 10) for i in range(50)}  # 1% of the cells
    root = write_grid(tmp_path / "grid", tasks=("arith", "count"),
                      algorithms=tuple(f"a{i}" for i in range(5)),
                      divergences=tuple(f"d{i}" for i in range(100)), seeds=tuple(range(10)),
                      steps=40, evals=5, failed=fail)
    t0 = time.perf_counter()
    results = load(root)
    t1 = time.perf_counter()
    board, seeds, curves = make_board(results)
    t2 = time.perf_counter()
    path = write_report(tmp_path / "report.html", results, board, seeds, curves)
    t3 = time.perf_counter()
    size = path.stat().st_size
    print(f"\n{len(seeds)} cells, {len(board.table)} groups: load {t1 - t0:.1f} s, "
          f"make_board {t2 - t1:.1f} s, write_report {t3 - t2:.1f} s, "
          f"page {size / 1e6:.1f} MB ({size / len(seeds):.0f} B per cell)")
    assert len(seeds) == 10_000 and (seeds["status"] == "failed").sum() == 100
    assert t3 - t2 < 30 and size < 20e6
    assert len(page_data(path.read_text(encoding="utf-8"))["cells"]["rows"]) == 10_000
