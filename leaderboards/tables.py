"""DataFrame -> DataFrame: the per-seed table, the per-group leaderboard, learning curves, and
the matched-budget table.

A group is one (task, algorithm, divergence, swept config values). Its cells are (base, RL seed)
runs; only `completed` cells enter means, every other status is counted per group and shown in
`flags`. Means are two-level (the mean over bases of each base's mean over seeds); CIs resample
bases, seeds within bases and evaluation items (stats.hierarchical_replicates); comparisons with
the baseline are paired by (base, seed), so they also share prompts and sampling streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from leaderboards.reading import STATUSES, Problem
from leaderboards.stats import (
    hierarchical_replicates,
    holm,
    paired_ttest,
    percentile_ci,
    rank,
    seeds_needed,
    variance_components,
    welch_ttest,
)

KEYS = ["task", "algorithm", "divergence"]
# Metrics given their own column in the rendered tables (when present), with a short label.
RESPONSE_TOKENS = "response_tokens_mean"
REG_PG = "reg_pg_ratio"
REG_PG_GRAD = "reg_pg_grad_ratio"
SQRT_KL = "sqrt_kl"
# The yardstick: metrics every cell reports whatever its divergence; each gets a mean and a CI.
YARDSTICK = ("pass@1", "mean@", "pass@", "sqrt_kl", "kl_pi_pi0", "kl_pi0_pi", "entropy")
ITEM_METRICS = ("accuracy", "pass@", "mean@")  # metrics whose items are stored per cell


@dataclass
class Board:
    """A leaderboard table plus what is needed to render it.

    table columns: KEYS and `sweep_keys`; for the primary metric p: `<p>_rank`, `<p>_mean`,
    `<p>_std`, `<p>_ci_low`, `<p>_ci_high`, `n` (completed cells with a value of p), `n_bases`,
    `<p>_var_base`, `<p>_var_seed` (variance components between bases and between RL seeds of
    one base), `<p>_var_items` (variance of the mean from the finite evaluation set); against
    the baseline of the same task, paired by (base, seed): `<p>_diff`, `<p>_diff_ci_low`,
    `<p>_diff_ci_high`, `n_pairs`, `<p>_p_value`, `<p>_p_adj` (Holm over the table), `test`
    (what the p-value tests), `seeds_needed` (RL seeds per base for 80% power at the observed
    difference) and `p_note`; for yardstick metrics m also `<m>_ci_low/high`; `<m>_mean` and,
    for ranked metrics, `<m>_rank` for every other metric m; `wall_time_s_mean`; `n_<status>`
    for every status; `flags`; `is_baseline`. Rows: by task, then primary rank, keys.
    """

    table: pd.DataFrame
    primary: str
    direction: str
    baseline: tuple[str, str] | None
    n_boot: int
    level: float
    seed: int
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    title: str = "Leaderboard"
    sweep_keys: list[str] = field(default_factory=list)
    budgets: pd.DataFrame | None = None  # the matched-budget table (matched_budget_table)

    @property
    def keys(self) -> list[str]:
        return KEYS + self.sweep_keys


def seed_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell, every status included, sorted by group, base and seed (long format)."""
    return cells.sort_values(KEYS + ["base", "seed", "cell_id"], ignore_index=True)


def _flags(out: pd.DataFrame, primary: str) -> np.ndarray:
    """'2 failed, 1 incomplete' per row: every non-completed status, then missing values."""
    flags = np.full(len(out), "", dtype=object)
    parts = [(out[f"n_{s}"].to_numpy(), f" {s}") for s in STATUSES[1:]]
    parts.append(((out["n_completed"] - out["n"]).to_numpy(), f" missing {primary}"))
    for counts, label in parts:
        has = counts > 0
        text = counts[has].astype(str).astype(object) + label
        flags[has] = np.where(flags[has] == "", text, flags[has] + ", " + text)
    return flags


def item_matrix(metric: str, cell_ids, items: dict | None) -> np.ndarray | None:
    """(C, n) per-item contributions of `metric` for these cells, or None unless every cell
    has them with one n: accuracy from greedy 0/1 outcomes; pass@k and mean@K from the
    number of correct samples out of K (the unbiased pass@k of each item)."""
    if not items or not metric.startswith(ITEM_METRICS):
        return None
    rows = []
    for cid in cell_ids:
        it = items.get(cid)
        if it is None:
            return None
        if metric == "accuracy" and "accuracy" in it:
            rows.append(it["accuracy"].astype(float))
        elif metric.startswith(("pass@", "mean@")) and "correct_of_k" in it:
            K, k = it["samples"], int(metric.split("@")[1])
            if k > K or (metric.startswith("mean@") and k != K):
                return None
            c = it["correct_of_k"]
            rows.append(c / K if metric.startswith("mean@") else _pass_at_k_items(K, c, k))
        else:
            return None
    if len({len(r) for r in rows}) != 1:
        return None
    return np.vstack(rows)


def _pass_at_k_items(n: int, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per item (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), vectorised."""
    c = np.asarray(c, dtype=float)
    i = np.arange(1, n + 1, dtype=float)  # 1 - k/i for i in (n-c, n]
    terms = np.where(i[None, :] > (n - c)[:, None], 1.0 - k / i[None, :], 1.0)
    return np.where(n - c < k, 1.0, 1.0 - terms.prod(axis=1))


def _two_level_mean(values: np.ndarray, bases: np.ndarray) -> float:
    if len(values) == 0:
        return math.nan
    keys, inv = np.unique(bases, return_inverse=True)
    return float((np.bincount(inv, weights=values) / np.bincount(inv)).mean())


def _sizes(bases: np.ndarray) -> tuple[int, ...]:
    """Seeds per base, for cells sorted by base (the layout design_weights expects)."""
    _, counts = np.unique(bases, return_counts=True)
    return tuple(int(c) for c in counts)


def _ci(values, bases, items, n_boot, level, seed) -> tuple[float, float]:
    if len(values) < 2 and items is None or len(values) == 0:
        return math.nan, math.nan
    reps = hierarchical_replicates(values, _sizes(bases), items, n_boot, seed)
    return percentile_ci(reps, level)


def summarize(cells: pd.DataFrame, directions: dict[str, str], primary: str,
              baseline: tuple[str, str] | None, *, sweep_keys: list[str] | None = None,
              items: dict | None = None, n_boot: int = 10_000, level: float = 0.95,
              seed: int = 0) -> Board:
    """Aggregate cells (as from `load`) into a Board. `baseline` is (algorithm, divergence);
    `items` the per-item outcomes of `load` (without them, items are not resampled)."""
    sweep_keys = [k for k in (sweep_keys or []) if k in cells.columns]
    keys = KEYS + sweep_keys
    direction = directions.get(primary, "max")
    metrics = sorted(directions)
    cells = cells.copy()
    if primary not in cells.columns:
        cells[primary] = np.nan
    done_all = cells[cells["status"] == "completed"].sort_values(["base", "seed", "cell_id"])
    groups = cells[keys].drop_duplicates().sort_values(keys, na_position="first")
    groups = groups.reset_index(drop=True)
    yard = [m for m in metrics if m != primary and m.startswith(YARDSTICK)]
    yard += [m for m in metrics if m.endswith(("_drop",)) or (m.endswith("_accuracy")
                                                               and not m.startswith("base_"))]

    rows = []
    for g in groups.itertuples(index=False):
        key = dict(zip(keys, g, strict=True))
        sel = _match(cells, key)
        done = _match(done_all, key)
        have = done[done[primary].notna()]
        v, b = have[primary].to_numpy(float), have["base"].to_numpy()
        it = item_matrix(primary, have["cell_id"], items)
        r = {**key, f"{primary}_mean": _two_level_mean(v, b),
             f"{primary}_std": float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
             "n": len(v), "n_bases": len(np.unique(b))}
        r[f"{primary}_ci_low"], r[f"{primary}_ci_high"] = _ci(v, b, it, n_boot, level, seed)
        var_b, var_s = variance_components(v, b) if len(v) else (math.nan, math.nan)
        r[f"{primary}_var_base"], r[f"{primary}_var_seed"] = var_b, var_s
        r[f"{primary}_var_items"] = (float(it.mean(axis=0).var(ddof=1) / it.shape[1])
                                     if it is not None else math.nan)
        for m in yard:
            h = done[done[m].notna()]
            mv, mb = h[m].to_numpy(float), h["base"].to_numpy()
            mi = item_matrix(m, h["cell_id"], items)
            r[f"{m}_mean"] = _two_level_mean(mv, mb)
            r[f"{m}_ci_low"], r[f"{m}_ci_high"] = _ci(mv, mb, mi, n_boot, level, seed)
        for m in metrics:
            if m != primary and m not in yard:
                r[f"{m}_mean"] = _two_level_mean(done[m].dropna().to_numpy(float),
                                                 done.loc[done[m].notna(), "base"].to_numpy())
        r["wall_time_s_mean"] = float(done["wall_time_s"].mean()) if len(done) else math.nan
        counts = sel["status"].value_counts()
        for st in STATUSES:
            r[f"n_{st}"] = int(counts.get(st, 0))
        rows.append(r)
    out = pd.DataFrame(rows)
    _compare(out, done_all, keys, primary, baseline, items, n_boot, level, seed)
    out.insert(len(keys), f"{primary}_rank", rank(out[f"{primary}_mean"], direction,
                                                  out["task"]))
    for m in metrics:
        if m != primary and directions[m] != "none":
            out[f"{m}_rank"] = rank(out[f"{m}_mean"], directions[m], out["task"])
    out["flags"] = _flags(out, primary)
    out = out[[c for c in out.columns if c != "is_baseline"] + ["is_baseline"]]
    out = out.sort_values(["task", f"{primary}_rank", *keys[1:]], na_position="last",
                          ignore_index=True)

    notes = []
    if baseline is not None:
        for task in sorted(set(out["task"]) - set(out.loc[out["is_baseline"], "task"])):
            notes.append(f"task {task!r} has no baseline group {baseline[0]}/{baseline[1]}; "
                         "no differences shown for it")
    if primary not in directions and len(cells):
        notes.append(f"no result reports the primary metric {primary!r}")
    if len(out) and (out["n_bases"] == 1).all():
        notes.append("every group has one base model: CIs and p-values cover RL seeds and "
                     "evaluation items, not the base (add bases to the grid's [axes])")
    return Board(table=out, primary=primary, direction=direction, baseline=baseline,
                 n_boot=n_boot, level=level, seed=seed, notes=notes, sweep_keys=sweep_keys)


def _match(df: pd.DataFrame, key: dict) -> pd.DataFrame:
    """Rows of df whose key columns equal `key` (NaN matches NaN)."""
    ok = np.ones(len(df), dtype=bool)
    for k, v in key.items():
        col = df[k]
        ok &= col.isna().to_numpy() if _isna(v) else (col == v).to_numpy()
    return df[ok]


def _isna(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _compare(out: pd.DataFrame, done: pd.DataFrame, keys: list[str], primary: str,
             baseline: tuple[str, str] | None, items, n_boot, level, seed) -> None:
    """Differences against the baseline, paired by (base, seed); fills the comparison columns.

    A group's baseline cells are the completed baseline cells of its task that agree with it on
    every swept key the baseline itself sets. The p-value is a paired t-test on the per-base
    mean differences when there are 2+ bases (the unit that generalises over bases), else on
    the per-seed differences; without 2 pairs it falls back to Welch's test (unpaired)."""
    p = primary
    for col in (f"{p}_diff", f"{p}_diff_ci_low", f"{p}_diff_ci_high", f"{p}_p_value",
                "seeds_needed"):
        out[col] = math.nan
    out["n_pairs"] = 0
    out["test"] = ""
    out["is_baseline"] = False
    notes = [""] * len(out)
    if baseline is None:
        out["p_note"] = notes
        out[f"{p}_p_adj"] = math.nan
        return
    is_b = ((out["algorithm"] == baseline[0]) & (out["divergence"] == baseline[1])).to_numpy()
    out["is_baseline"] = is_b
    base_cells = done[(done["algorithm"] == baseline[0]) & (done["divergence"] == baseline[1])
                      & done[p].notna()]
    for i in range(len(out)):
        if is_b[i]:
            notes[i] = "baseline"
            continue
        row = out.iloc[i]
        ref = base_cells[base_cells["task"] == row["task"]]
        for k in keys[3:]:  # swept keys the baseline sets must agree
            if ref[k].notna().any():
                ref = ref[ref[k] == row[k]] if not _isna(row[k]) else ref.iloc[:0]
        if ref.empty:
            notes[i] = "no baseline in task"
            continue
        mine = _match(done, {k: row[k] for k in keys})
        mine = mine[mine[p].notna()]
        pairs = mine.merge(ref, on=["base", "seed"], suffixes=("", "_ref"))
        if pairs.duplicated(["base", "seed"]).any():
            notes[i] = "ambiguous baseline"
            continue
        pairs = pairs.sort_values(["base", "seed"])
        d = (pairs[p] - pairs[f"{p}_ref"]).to_numpy(float)
        b = pairs["base"].to_numpy()
        out.loc[i, "n_pairs"] = len(d)
        if len(d) >= 2:
            it, it_ref = (item_matrix(p, pairs[c], items) for c in ("cell_id", "cell_id_ref"))
            di = it - it_ref if it is not None and it_ref is not None else None
            out.loc[i, f"{p}_diff"] = _two_level_mean(d, b)
            out.loc[i, f"{p}_diff_ci_low"], out.loc[i, f"{p}_diff_ci_high"] = _ci(
                d, b, di, n_boot, level, seed)
            n_bases = len(np.unique(b))
            if n_bases >= 2:
                keys_b, inv = np.unique(b, return_inverse=True)
                per_base = np.bincount(inv, weights=d) / np.bincount(inv)
                _, pv = paired_ttest(per_base)
                out.loc[i, "test"] = f"paired t over {n_bases} bases"
            else:
                _, pv = paired_ttest(d)
                out.loc[i, "test"] = f"paired t over {len(d)} seeds"
            out.loc[i, f"{p}_p_value"] = pv
            var_b, var_s = variance_components(d, b)
            out.loc[i, "seeds_needed"] = seeds_needed(out.loc[i, f"{p}_diff"], var_b, var_s,
                                                      n_bases)
            if math.isnan(pv):
                notes[i] = "zero variance" if len(d) >= 2 else "n<2"
        else:  # too few pairs: compare the two groups' means unpaired
            x, y = mine[p].to_numpy(float), ref[p].to_numpy(float)
            out.loc[i, f"{p}_diff"] = x.mean() - y.mean()
            _, pv = welch_ttest(x.mean(), x.var(ddof=1) if len(x) > 1 else np.nan, len(x),
                                y.mean(), y.var(ddof=1) if len(y) > 1 else np.nan, len(y))
            out.loc[i, f"{p}_p_value"] = float(pv)
            out.loc[i, "test"] = "Welch (unpaired)"
            if math.isnan(float(pv)):
                notes[i] = "n<2"
    out["p_note"] = notes
    out[f"{p}_p_adj"] = holm(out[f"{p}_p_value"].to_numpy(float))


BUDGET_QUANTILES = (0.25, 0.5, 0.75)


def _nice(x: float) -> float:
    """Two significant digits: budgets are read by people."""
    return float(f"{x:.2g}") if x > 0 else 0.0


def matched_budget_table(cells: pd.DataFrame, board: Board, items: dict | None = None,
                         metrics: list[str] | None = None, budgets: list[float] | None = None,
                         reference: str | None = "kl_k3", x: str = SQRT_KL) -> pd.DataFrame:
    """Each divergence's metrics at common drift budgets, interpolated along its own sweep.

    Coefficients that make divergences comparable differ by orders of magnitude, so the table
    compares them where they let the policy move equally far: at budgets of sqrt(KL(pi || pi_0))
    (Gao et al. 2210.10760's x axis). A family is one (task, algorithm, divergence) with two or
    more sweep points; its value at a budget is the linear interpolation between the two points
    around it (never extrapolated: NaN outside its range). Budgets default to the 25/50/75%
    points of the range every family covers (or of all points when the ranges do not overlap).
    CIs come from the same two-level bootstrap as the leaderboard, replicate by replicate, and
    because every group of a grid shares its design draws, a difference to the `reference`
    divergence (kl_k3 by default) is a paired bootstrap: its p-value is twice the smaller tail,
    Holm-adjusted across the table."""
    t, p = board.table, board.primary
    if x not in cells.columns or f"{x}_mean" not in t:
        return pd.DataFrame()
    ks = sorted((int(c[5:-5]), c[:-5]) for c in t.columns
                if c.startswith("pass@") and c.endswith("_mean"))
    metrics = metrics or [p] + [m for _, m in ks[-1:]]  # the primary and pass@K
    done = cells[cells["status"] == "completed"].sort_values(["base", "seed", "cell_id"])
    rows, reps = [], {}
    for task in sorted(t["task"].unique()):
        fams = {}
        for (a, d), g in t[t["task"] == task].groupby(["algorithm", "divergence"]):
            g = g[g[f"{x}_mean"].notna()]
            if len(g) >= 2:
                fams[(a, d)] = g
        if not fams:
            continue
        grid = budgets or _default_budgets([g[f"{x}_mean"].to_numpy(float)
                                            for g in fams.values()])
        for (a, d), g in fams.items():
            # per group: replicates of x and of each metric, shared design draws
            xs, ys = [], {m: [] for m in metrics}
            for _, row in g.iterrows():
                sel = _match(done, {k: row[k] for k in board.keys})
                sel = sel[sel[x].notna()]
                b = sel["base"].to_numpy()
                xs.append(hierarchical_replicates(sel[x].to_numpy(float), _sizes(b), None,
                                                  board.n_boot, board.seed))
                for m in metrics:
                    it = item_matrix(m, sel["cell_id"], items)
                    ys[m].append(hierarchical_replicates(sel[m].to_numpy(float), _sizes(b), it,
                                                         board.n_boot, board.seed))
            xm = g[f"{x}_mean"].to_numpy(float)
            for budget in grid:
                r = {"task": task, "algorithm": a, "divergence": d, "budget": budget,
                     "points": len(g)}
                for m in metrics:
                    point = _interp(budget, xm, g[f"{m}_mean"].to_numpy(float))
                    rep = _interp_reps(budget, np.vstack(xs), np.vstack(ys[m]))
                    reps[(task, a, d, budget, m)] = rep
                    r[m] = point
                    ok = ~np.isnan(rep)
                    r[f"{m}_ci_low"], r[f"{m}_ci_high"] = (
                        percentile_ci(rep[ok], board.level) if ok.mean() >= 0.9 and
                        not math.isnan(point) else (math.nan, math.nan))
                rows.append(r)
    out = pd.DataFrame(rows)
    if out.empty or reference is None:
        return out
    for m in metrics:  # paired differences to the reference divergence at each budget
        diffs, pvals = [], []
        for r in out.itertuples(index=False):
            ref = reps.get((r.task, r.algorithm, reference, r.budget, m))
            mine = reps[(r.task, r.algorithm, r.divergence, r.budget, m)]
            if ref is None or r.divergence == reference:
                diffs.append((math.nan,) * 3)
                pvals.append(math.nan)
                continue
            dd = mine - ref
            dd = dd[~np.isnan(dd)]
            if len(dd) < 0.9 * len(mine):
                diffs.append((math.nan,) * 3)
                pvals.append(math.nan)
                continue
            lo, hi = percentile_ci(dd, board.level)
            diffs.append((float(dd.mean()), lo, hi))
            pvals.append(min(1.0, 2 * min((dd <= 0).mean(), (dd >= 0).mean())))
        out[f"{m}_vs_{reference}"] = [d[0] for d in diffs]
        out[f"{m}_vs_{reference}_ci_low"] = [d[1] for d in diffs]
        out[f"{m}_vs_{reference}_ci_high"] = [d[2] for d in diffs]
        out[f"{m}_vs_{reference}_p"] = pvals
        out[f"{m}_vs_{reference}_p_adj"] = holm(pvals)
    return out


def _default_budgets(ranges: list[np.ndarray]) -> list[float]:
    lo = max(float(r.min()) for r in ranges)
    hi = min(float(r.max()) for r in ranges)
    if not lo < hi:  # no common range: quantiles of every point
        pooled = np.concatenate(ranges)
        return sorted({_nice(float(np.quantile(pooled, q))) for q in BUDGET_QUANTILES})
    return sorted({_nice(lo + q * (hi - lo)) for q in BUDGET_QUANTILES})


def _interp(at: float, x: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if not x[0] <= at <= x[-1]:
        return math.nan
    return float(np.interp(at, x, y))


def _interp_reps(at: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Interpolate every replicate (columns of the (G, R) arrays) at `at`; NaN out of range."""
    order = np.argsort(xs, axis=0, kind="stable")
    xs, ys = np.take_along_axis(xs, order, 0), np.take_along_axis(ys, order, 0)
    out = np.full(xs.shape[1], np.nan)
    for j in range(xs.shape[0] - 1):  # segment j: between sorted points j and j + 1
        x0, x1, y0, y1 = xs[j], xs[j + 1], ys[j], ys[j + 1]
        hit = np.isnan(out) & (x0 <= at) & (at <= x1)
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(x1 > x0, (at - x0) / (x1 - x0), 0.0)
        out[hit] = (y0 + w * (y1 - y0))[hit]
    return out


def curve_table(curves: pd.DataFrame, cells: pd.DataFrame, eval_metric: str = "accuracy",
                sweep_keys: list[str] | None = None) -> pd.DataFrame:
    """Mean over completed cells per group and step: train `reward_mean` and eval `eval_metric`.

    Columns: KEYS, the swept keys, step, train_reward_mean, train_n, eval_<eval_metric>, eval_n
    (the n columns count cells contributing to that step).
    """
    keys = KEYS + [k for k in (sweep_keys or []) if k in cells.columns]
    cols = keys + ["step", "train_reward_mean", "train_n", f"eval_{eval_metric}", "eval_n"]
    if curves.empty or "kind" not in curves.columns or "step" not in curves.columns:
        return pd.DataFrame(columns=cols)
    done = cells.loc[cells["status"] == "completed", keys + ["cell_id"]]
    # metrics.jsonl has a numeric `divergence` column (the mean penalty per step); the group
    # keys come from the cells table, so drop any same-named curve columns before merging.
    # Rows of transfer tasks (a `task` field) are not the cell's own learning curve.
    c = curves
    if "task" in c.columns:
        c = c[c["task"].isna()]
    c = c.drop(columns=[k for k in keys if k in c.columns]).merge(done, on="cell_id",
                                                                   how="inner")
    parts = []
    for kind, metric, name in (("train", "reward_mean", "train"),
                               ("eval", eval_metric, "eval")):
        if metric not in c.columns:
            continue
        sub = c.loc[c["kind"] == kind, keys + ["step", metric]].dropna(subset=[metric])
        agg = sub.groupby(keys + ["step"], dropna=False)[metric].agg(["mean", "count"])
        agg.columns = [f"{name}_reward_mean" if name == "train" else f"eval_{eval_metric}",
                       f"{name}_n"]
        parts.append(agg)
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, axis=1).reset_index().reindex(columns=cols)
    for n in ("train_n", "eval_n"):
        out[n] = out[n].fillna(0).astype(int)
    return out.sort_values(keys + ["step"], ignore_index=True)


__all__ = ["Board", "KEYS", "curve_table", "matched_budget_table", "seed_table", "summarize"]
