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
    CIBatch,
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
    cells["_g"] = cells.groupby(keys, dropna=False, sort=True).ngroup()
    groups = cells.drop_duplicates("_g").sort_values("_g")[keys].reset_index(drop=True)
    G = len(groups)
    done = cells[cells["status"] == "completed"].sort_values(["_g", "base", "seed", "cell_id"])
    gid = done["_g"].to_numpy()
    lo_i = np.searchsorted(gid, np.arange(G), "left")
    hi_i = np.searchsorted(gid, np.arange(G), "right")
    bases, cids = done["base"].to_numpy(int), done["cell_id"].to_numpy()
    yard = [m for m in metrics if m != primary and m.startswith(YARDSTICK)]
    yard += [m for m in metrics if m.endswith(("_drop",)) or (m.endswith("_accuracy")
                                                               and not m.startswith("base_"))]

    batch = CIBatch(n_boot, seed, level)  # every CI of the table, computed in one pass
    pending: list[tuple[int, str, int]] = []  # (row, column prefix, batch index)
    out = groups.copy()
    cols: dict[str, np.ndarray] = {}

    def column(name: str) -> np.ndarray:
        return cols.setdefault(name, np.full(G, np.nan))

    def per_group(m: str, ci: bool, with_items: bool = False) -> None:
        vals = done[m].to_numpy(float)
        for g in range(G):
            sl = slice(lo_i[g], hi_i[g])
            ok = ~np.isnan(vals[sl])
            v, b = vals[sl][ok], bases[sl][ok]
            column(f"{m}_mean")[g] = _two_level_mean(v, b)
            it = item_matrix(m, cids[sl][ok], items) if with_items else None
            if ci and len(v) and (len(v) >= 2 or it is not None):
                pending.append((g, m, batch.add(v, _sizes(b), it)))
            if m == primary:
                column("n")[g] = len(v)
                column("n_bases")[g] = len(np.unique(b))
                column(f"{m}_std")[g] = np.std(v, ddof=1) if len(v) > 1 else math.nan
                column(f"{m}_var_base")[g], column(f"{m}_var_seed")[g] = (
                    variance_components(v, b) if len(v) else (math.nan, math.nan))
                column(f"{m}_var_items")[g] = (it.mean(axis=0).var(ddof=1) / it.shape[1]
                                               if it is not None else math.nan)

    per_group(primary, ci=True, with_items=True)
    out[f"{primary}_mean"] = cols[f"{primary}_mean"]
    out[f"{primary}_std"] = cols[f"{primary}_std"]
    out["n"] = cols["n"].astype(int)
    out["n_bases"] = cols["n_bases"].astype(int)
    out[f"{primary}_ci_low"] = np.nan
    out[f"{primary}_ci_high"] = np.nan
    for c in ("var_base", "var_seed", "var_items"):
        out[f"{primary}_{c}"] = cols[f"{primary}_{c}"]
    for m in yard:  # item metrics get item-level CIs where they are compared (budgets)
        per_group(m, ci=not m.startswith(ITEM_METRICS))
        out[f"{m}_mean"] = cols[f"{m}_mean"]
        if any(p == m for _, p, _ in pending):
            out[f"{m}_ci_low"], out[f"{m}_ci_high"] = np.nan, np.nan
    others = [m for m in metrics if m != primary and m not in yard]
    for m in others:  # two-level means, vectorised
        d = done[["_g", "base", m]].dropna(subset=[m])
        means = d.groupby(["_g", "base"])[m].mean().groupby(level=0).mean()
        out[f"{m}_mean"] = means.reindex(range(G)).to_numpy()
    out["wall_time_s_mean"] = done.groupby("_g")["wall_time_s"].mean().reindex(
        range(G)).to_numpy()
    counts = (cells.groupby("_g")["status"].value_counts().unstack(fill_value=0)
              .reindex(index=range(G), columns=list(STATUSES), fill_value=0))
    for st in STATUSES:
        out[f"n_{st}"] = counts[st].to_numpy(int)

    diffs = _compare(out, done, keys, primary, baseline, items, batch)
    cis = batch.run()
    fill: dict[str, np.ndarray] = {}
    for row, prefix, k in pending + [(r, f"{primary}_diff", k) for r, k in diffs]:
        for end, value in zip(("_ci_low", "_ci_high"), cis[k], strict=True):
            fill.setdefault(prefix + end, out[prefix + end].to_numpy(float).copy())[row] = value
    for col, values in fill.items():
        out[col] = values
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
    if len(out) and (out["n_bases"] <= 1).all():
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
             baseline: tuple[str, str] | None, items, batch: CIBatch) -> list[tuple[int, int]]:
    """Differences against the baseline, paired by (base, seed); fills the comparison columns.

    A group's baseline cells are the completed baseline cells of its task that agree with it on
    every swept key the baseline itself sets. The p-value is a paired t-test on the per-base
    mean differences when there are 2+ bases (the unit that generalises over bases), else on
    the per-seed differences; without 2 pairs it falls back to Welch's test (unpaired).
    Returns (row, batch index) of each difference's CI, queued on `batch`."""
    p = primary
    n = len(out)
    diff, p_value, need = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    n_pairs, test, notes = np.zeros(n, dtype=int), [""] * n, [""] * n
    queued: list[tuple[int, int]] = []
    is_b = np.zeros(n, dtype=bool)
    if baseline is not None:
        is_b = ((out["algorithm"] == baseline[0]) & (out["divergence"] == baseline[1])
                ).to_numpy()
        have = done[done[p].notna()]
        # the baseline's cells, by group: swept values it sets -> {(base, seed): (value, id)}
        ref_groups = []
        for _, g in have[(have["algorithm"] == baseline[0])
                         & (have["divergence"] == baseline[1])].groupby("_g"):
            sets = {k: g[k].iat[0] for k in keys[3:] if not _isna(g[k].iat[0])}
            ref_groups.append((g["task"].iat[0], sets, {
                (b, s): (v, c) for b, s, v, c in zip(g["base"], g["seed"], g[p],
                                                     g["cell_id"], strict=True)}))
        mine_by_g = {g: df for g, df in have.groupby("_g")}
        for i in range(n):
            if is_b[i]:
                notes[i] = "baseline"
                continue
            row = out.iloc[i]
            refs = [r for t, sets, r in ref_groups if t == row["task"]
                    and all(not _isna(row[k]) and row[k] == v for k, v in sets.items())]
            if not refs:
                notes[i] = "no baseline in task"
                continue
            if len(refs) > 1:
                notes[i] = "ambiguous baseline"
                continue
            ref = refs[0]
            mine = mine_by_g.get(i)  # rows of `out` are still in group-id order here
            _pair(i, mine, ref, p, items, batch, diff, p_value, need, n_pairs, test, notes,
                  queued)
    out[f"{p}_diff"], out[f"{p}_diff_ci_low"], out[f"{p}_diff_ci_high"] = diff, np.nan, np.nan
    out[f"{p}_p_value"], out["seeds_needed"], out["n_pairs"] = p_value, need, n_pairs
    out["test"], out["p_note"], out["is_baseline"] = test, notes, is_b
    out[f"{p}_p_adj"] = holm(p_value) if baseline is not None else np.nan
    return queued


def _pair(i, mine, ref, p, items, batch, diff, p_value, need, n_pairs, test, notes, queued):
    """One group against its baseline cells `ref` ({(base, seed): (value, cell id)})."""
    if mine is None or mine.empty:
        notes[i] = "n<2"
        return
    keys = list(zip(mine["base"], mine["seed"], strict=True))
    both = [j for j, k in enumerate(keys) if k in ref]
    n_pairs[i] = len(both)
    if len(both) >= 2:
        b = mine["base"].to_numpy()[both]
        d = mine[p].to_numpy(float)[both] - np.array([ref[keys[j]][0] for j in both])
        it = item_matrix(p, mine["cell_id"].to_numpy()[both], items)
        it_ref = item_matrix(p, [ref[keys[j]][1] for j in both], items)
        di = it - it_ref if it is not None and it_ref is not None else None
        diff[i] = _two_level_mean(d, b)
        queued.append((i, batch.add(d, _sizes(b), di)))
        n_bases = len(np.unique(b))
        if n_bases >= 2:
            _, inv = np.unique(b, return_inverse=True)
            _, pv = paired_ttest(np.bincount(inv, weights=d) / np.bincount(inv))
            test[i] = f"paired t over {n_bases} bases"
        else:
            _, pv = paired_ttest(d)
            test[i] = f"paired t over {len(d)} seeds"
        p_value[i] = pv
        var_b, var_s = variance_components(d, b)
        need[i] = seeds_needed(diff[i], var_b, var_s, n_bases)
        if math.isnan(pv):
            notes[i] = "zero variance"
        return
    # too few pairs: compare the two groups' means unpaired
    x = mine[p].to_numpy(float)
    y = np.array([v for v, _ in ref.values()])
    diff[i] = x.mean() - y.mean()
    _, pv = welch_ttest(x.mean(), x.var(ddof=1) if len(x) > 1 else np.nan, len(x),
                        y.mean(), y.var(ddof=1) if len(y) > 1 else np.nan, len(y))
    p_value[i] = float(pv)
    test[i] = "Welch (unpaired)"
    if math.isnan(float(pv)):
        notes[i] = "n<2"


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
