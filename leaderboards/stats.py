"""Statistics over cells: bootstrap CIs (over seeds, and over bases, seeds and evaluation items),
variance components, paired tests, Holm adjustment, power, direction-aware ranks. No I/O."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats as _sp

# Bootstrap means of at most this many floats are held at once (~40 MB).
_CHUNK_FLOATS = 5_000_000


def bootstrap_draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Resample indices used for every group of size n: shape (n_boot, n), ints in [0, n).

    Seeded by (seed, n) only, so a group's CI does not change when other groups are added.
    """
    return np.random.default_rng([seed, n]).integers(0, n, size=(n_boot, n))


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """a + (b - a) * t, rounded the way np.quantile does it."""
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)


def bootstrap_ci(samples: Sequence[np.ndarray], n_boot: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the mean for each sample; NaN where a sample has < 2 values.

    Equivalent to, per sample x of size n: `d = bootstrap_draws(n, n_boot, seed)`;
    `np.percentile(x[d].mean(1), [50 - 50 * level, 50 + 50 * level])`. Vectorised: samples of
    equal size share the draws, which become a count matrix C (n_boot, n) so that all bootstrap
    means of G samples are one product X (G, n) @ C.T / n.
    """
    lo = np.full(len(samples), np.nan)
    hi = np.full(len(samples), np.nan)
    by_n: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if len(s) >= 2:
            by_n[len(s)].append(i)
    # np.quantile's default ("linear") rule: the value at position q * (n_boot - 1), between
    # order statistics k and k + 1. One in-place partial sort at the two inner neighbours;
    # each outer one is then the max (or min) of the few values beyond it.
    pos = np.array([0.5 - level / 2, 0.5 + level / 2]) * (n_boot - 1)
    k = np.floor(pos).astype(int)
    frac = pos - k
    k_lo, k_hi = min(k[0] + 1, n_boot - 1), k[1]
    for n, idx in by_n.items():
        draws = bootstrap_draws(n, n_boot, seed)
        flat = (np.arange(n_boot)[:, None] * n + draws).ravel()
        counts = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)
        x = np.stack([np.asarray(samples[i], dtype=float) for i in idx])  # (G, n)
        step = max(1, _CHUNK_FLOATS // n_boot)
        for start in range(0, len(idx), step):
            means = x[start:start + step] @ counts.T / n  # (g, n_boot) bootstrap means
            means.partition([k_lo, k_hi], axis=1)
            lo_a = means[:, :k_lo].max(axis=1) if k_lo > k[0] else means[:, k[0]]
            lo_b = means[:, k_lo]
            hi_a = means[:, k_hi]
            hi_b = means[:, k_hi + 1:].min(axis=1) if k_hi + 1 < n_boot else hi_a
            rows = idx[start:start + step]
            lo[rows] = _lerp(lo_a, lo_b, frac[0])
            hi[rows] = _lerp(hi_a, hi_b, frac[1])
    return lo, hi


def welch_ttest(mean1, var1, n1, mean2, var2, n2) -> tuple[np.ndarray, np.ndarray]:
    """Welch's unequal-variance t-test from summary statistics (sample variances, ddof=1).

    Element-wise over arrays; returns (t, two-sided p). Same numbers as
    `scipy.stats.ttest_ind(a, b, equal_var=False)`; NaN where either n < 2 or both variances
    are zero.
    """
    m1, v1, k1, m2, v2, k2 = (np.asarray(a, dtype=float) for a in (mean1, var1, n1,
                                                                   mean2, var2, n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        s1, s2 = v1 / k1, v2 / k2
        se2 = s1 + s2
        t = (m1 - m2) / np.sqrt(se2)
        df = se2 ** 2 / (s1 ** 2 / (k1 - 1) + s2 ** 2 / (k2 - 1))
        ok = (k1 >= 2) & (k2 >= 2) & (se2 > 0)
        t = np.where(ok, t, np.nan)
        p = np.where(ok, 2 * _sp.t.sf(np.abs(t), np.where(ok, df, 1.0)), np.nan)
    return t, p


def rank(values: pd.Series, direction: str, by: pd.Series | None = None) -> pd.Series:
    """1 = best. `max`: high values first; `min`: low values first; ties share the best rank;
    NaN values are unranked. `none` returns all <NA>. Ranked separately within each `by` value.
    """
    if direction not in ("max", "min"):
        if direction != "none":
            raise ValueError(f"direction must be max, min or none, got {direction!r}")
        return pd.Series(pd.NA, index=values.index, dtype="Int64")
    asc = direction == "min"
    r = values.groupby(by).rank(method="min", ascending=asc) if by is not None else \
        values.rank(method="min", ascending=asc)
    return r.astype("Int64")


# ---- every source of variance: bases, RL seeds, evaluation items ----------------------------
# A cell is one (base, RL seed) run evaluated on one fixed set of n items. Its accuracy varies
# with the base model (pretraining seed, float kernels), the RL seed, and the finite evaluation
# set. CIs here resample all three: bases with replacement, then seeds within each drawn base
# (a two-stage cluster bootstrap: Davison & Hinkley 1997, §3.8), and the items, the same item
# draws for every group (the test set is shared, so comparisons stay coherent).

def item_counts(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_items) resampling counts of the evaluation items, seeded by (seed, n_items)
    only, so every group (and every table) sees the same item draws."""
    rng = np.random.default_rng([seed, 17, n_items])
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot).astype(float)


def design_weights(sizes: Sequence[int], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, C) weights of C = sum(sizes) cells, laid out base by base (sizes[b] seeds of base
    b), for the two-stage bootstrap mean: draw B bases with replacement; for each draw of a base,
    draw its seeds with replacement. A base drawn k times contributes k independent seed
    draws, i.e. Multinomial(k * S_b, 1/S_b) counts, each weighted 1 / (B * S_b). Seeded by the
    design only, so equal designs share their draws. One base: only seeds are resampled."""
    sizes = [int(s) for s in sizes]
    B = len(sizes)
    rng = np.random.default_rng([seed, 29, B, *sizes])
    k = (rng.multinomial(B, np.full(B, 1.0 / B), size=n_boot) if B > 1
         else np.ones((n_boot, 1), dtype=np.int64))
    cols = []
    for b, S in enumerate(sizes):
        draws = rng.multinomial(k[:, b] * S, np.full(S, 1.0 / S))  # (n_boot, S)
        cols.append(draws / (B * S))
    return np.hstack(cols)


def hierarchical_replicates(values: np.ndarray, sizes: Sequence[int],
                            items: np.ndarray | None, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates (n_boot,) of the two-level mean of one group.

    values: (C,) per-cell metric, cells laid out base by base as in `design_weights`;
    items: (C, n) per-item contributions whose row means are `values` (e.g. 0/1 correctness),
    or None when the metric has no item-level data (then items are not resampled)."""
    omega = _design_cached(tuple(int(s) for s in sizes), n_boot, seed)  # (R, C)
    if items is None:
        return omega @ np.asarray(values, dtype=float)
    w = _items_cached(items.shape[1], n_boot, seed)  # (R, n)
    per_cell = items @ w.T / items.shape[1]  # (C, R): each cell's mean under each item draw
    return np.einsum("rc,cr->r", omega, per_cell)


@lru_cache(maxsize=64)
def _design_cached(sizes: tuple[int, ...], n_boot: int, seed: int) -> np.ndarray:
    w = design_weights(sizes, n_boot, seed)
    w.flags.writeable = False  # shared between calls
    return w


@lru_cache(maxsize=8)
def _items_cached(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    w = item_counts(n_items, n_boot, seed)
    w.flags.writeable = False
    return w


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    if replicates.size == 0 or np.isnan(replicates).all():
        return math.nan, math.nan
    lo, hi = np.percentile(replicates, [50 - 50 * level, 50 + 50 * level])
    return float(lo), float(hi)


def variance_components(values: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """One-way random-effects ANOVA estimates (sigma^2_between, sigma^2_within) of `values`
    grouped by `groups` (e.g. accuracy by base): MSW; max(0, (MSB - MSW) / n0) with
    n0 = (N - sum n_b^2 / N) / (k - 1) for unbalanced groups (Searle, Casella & McCulloch 1992,
    §3.6). sigma^2_between is NaN with one group; sigma^2_within is NaN with one value per
    group."""
    x = np.asarray(values, dtype=float)
    g = np.asarray(groups)
    keys, inv = np.unique(g, return_inverse=True)
    k, N = len(keys), len(x)
    n_b = np.bincount(inv, minlength=k).astype(float)
    means = np.bincount(inv, weights=x, minlength=k) / n_b
    ssw = float(((x - means[inv]) ** 2).sum())
    msw = ssw / (N - k) if N > k else math.nan
    if k < 2:
        return math.nan, msw if N > 1 else math.nan
    msb = float((n_b * (means - x.mean()) ** 2).sum()) / (k - 1)
    n0 = (N - (n_b ** 2).sum() / N) / (k - 1)
    if math.isnan(msw):
        return msb / n0, math.nan  # one value per group: base and seed are confounded
    return max(0.0, (msb - msw) / n0), msw


def paired_ttest(d: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of a one-sample t-test of paired differences against 0; NaN for fewer
    than 2 differences or zero variance."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    sd = d.std(ddof=1)
    if sd <= 1e-12 * max(1.0, abs(d.mean())):  # equal differences up to rounding
        return math.nan, math.nan
    t = d.mean() / (sd / math.sqrt(len(d)))
    return float(t), float(2 * _sp.t.sf(abs(t), len(d) - 1))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979) over the non-NaN entries; NaN stays NaN.
    Controls the family-wise error rate across every comparison of a table."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def seeds_needed(diff: float, var_base: float, var_seed: float, n_bases: int,
                 alpha: float = 0.05, power: float = 0.8, max_seeds: int = 10_000) -> float:
    """RL seeds per base needed to detect `diff` with a two-sided test at `alpha` and `power`,
    with `n_bases` bases, under the two-level model Var(mean diff) = var_base / B +
    var_seed / (B * S) (normal approximation). inf when even infinitely many seeds leave
    var_base / B too large (more bases are needed) or diff is 0; NaN without a variance
    estimate. A NaN var_base (one base: not identifiable) counts as 0, an optimistic bound."""
    if math.isnan(diff) or math.isnan(var_seed) or n_bases < 1:
        return math.nan
    if diff == 0:
        return math.inf
    z = _sp.norm.ppf(1 - alpha / 2) + _sp.norm.ppf(power)
    budget = (abs(diff) / z) ** 2 - (0.0 if math.isnan(var_base) else var_base / n_bases)
    if budget <= 0:
        return math.inf
    s = math.ceil(var_seed / (n_bases * budget)) if var_seed > 0 else 1
    return float(max(2, s)) if s <= max_seeds else math.inf


class CIBatch:
    """Two-level bootstrap CIs for many groups in one pass.

    `add(values, sizes, items)` queues a group (as `hierarchical_replicates` takes it) and
    returns its index; `run()` returns every (lo, hi). Item-level groups are stacked into chunks
    so their per-cell item-resampled means come from one large matrix product per chunk (small
    per-group products run far below the BLAS peak), and percentiles are taken a chunk at a
    time. Same draws, same numbers as `hierarchical_replicates` + `percentile_ci`."""

    CHUNK_ROWS = 512

    def __init__(self, n_boot: int, seed: int, level: float) -> None:
        self.n_boot, self.seed, self.level = n_boot, seed, level
        self.requests: list[tuple[np.ndarray, tuple[int, ...], np.ndarray | None]] = []

    def add(self, values, sizes, items: np.ndarray | None = None) -> int:
        v = np.asarray(values, dtype=float)
        self.requests.append((v, tuple(int(s) for s in sizes), items))
        return len(self.requests) - 1

    def run(self) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = [(math.nan, math.nan)] * len(self.requests)
        plain = [i for i, (_, _, it) in enumerate(self.requests) if it is None]
        q = [50 - 50 * self.level, 50 + 50 * self.level]
        for start in range(0, len(plain), self.CHUNK_ROWS):  # percentiles a chunk at a time
            idx = plain[start:start + self.CHUNK_ROWS]
            reps = np.stack([_design_cached(self.requests[i][1], self.n_boot, self.seed)
                             @ self.requests[i][0] for i in idx])
            lo, hi = np.percentile(reps, q, axis=1)
            for j, i in enumerate(idx):
                out[i] = (float(lo[j]), float(hi[j]))
        by_n: dict[int, list[int]] = defaultdict(list)
        for i, (_, _, it) in enumerate(self.requests):
            if it is not None:
                by_n[it.shape[1]].append(i)
        for n, idx in by_n.items():
            w = _items_cached(n, self.n_boot, self.seed)
            chunk: list[int] = []
            rows = 0
            for i in idx + [None]:
                if i is not None and (rows + len(self.requests[i][0]) <= self.CHUNK_ROWS
                                      or not chunk):
                    chunk.append(i)
                    rows += len(self.requests[i][0])
                    continue
                self._run_chunk(chunk, w, out)
                chunk, rows = ([i], len(self.requests[i][0])) if i is not None else ([], 0)
        return out

    def _run_chunk(self, chunk: list[int], w: np.ndarray, out: list) -> None:
        if not chunk:
            return
        Y = np.vstack([self.requests[i][2] for i in chunk])
        M = Y @ w.T / Y.shape[1]  # (rows, R): each cell's mean under each item draw
        reps = np.empty((len(chunk), self.n_boot))
        start = 0
        for j, i in enumerate(chunk):
            c = len(self.requests[i][0])
            omega = _design_cached(self.requests[i][1], self.n_boot, self.seed)
            reps[j] = np.einsum("rc,cr->r", omega, M[start:start + c])
            start += c
        lo, hi = np.percentile(reps, [50 - 50 * self.level, 50 + 50 * self.level], axis=1)
        for j, i in enumerate(chunk):
            out[i] = (float(lo[j]), float(hi[j]))
