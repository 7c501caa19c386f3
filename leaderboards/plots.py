"""PNG plots with matplotlib's Agg backend, one file per task and plot kind.

- `<task>_<metric>_ci.png`: primary metric mean with its CI, per divergence (and swept value)
  on the x axis, one marker per algorithm (side by side); the baseline mean as a dashed line.
- `<task>_<metric>_vs_length.png`: primary metric against mean response tokens per group.
- `<task>_learning_curves.png`: train reward and eval metric per step, mean over cells.
- `<task>_frontier.png`: primary metric against sqrt(KL(pi || pi_0)) (Gao et al. 2210.10760),
  seed means with CIs on both axes, one colour per divergence, each divergence's sweep joined
  in order of its coefficient; the base model (x = 0) and the baseline group marked.
- `<task>_pass_at_k.png`: pass@k against k (log axis), a panel per divergence, the base model
  dashed.
- `<task>_forgetting.png`: the retention task's drop against KL(pi_0 || pi) (RL's Razor,
  2509.04259), when the cells report one.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # must precede pyplot; no display is ever needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from leaderboards.tables import RESPONSE_TOKENS, Board  # noqa: E402

_MARKERS = "osD^vP*Xhp<>"
_MAX_LEGEND = 24  # more entries than this make the legend unreadable; they are left out


def _nkey(name: str) -> list:
    """Natural sort key: div2 before div10. re.split alternates text and digit runs."""
    return [int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", str(name)))]


def _natural(names) -> list[str]:
    return sorted(names, key=_nkey)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "viridis")
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


def _legend(ax, n: int, title: str) -> None:
    if n <= _MAX_LEGEND:
        ax.legend(title=title, fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.text(1.01, 0.5, f"{n} {title} entries\n(legend omitted)", transform=ax.transAxes,
                va="center", fontsize="small")


def _label(row, sweep_keys: list[str]) -> str:
    """'kl_k3 beta=0.1': divergence and the swept values it has."""
    parts = [row["divergence"]]
    for k in sweep_keys:
        v = row[k]
        if not (v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))):
            parts.append(f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float)
                         else f"{k.rsplit('.', 1)[-1]}={v}")
    return " ".join(parts)


def plot_ci(board: Board, task: str, path: Path) -> None:
    t = board.table[board.table["task"] == task].copy()
    p = board.primary
    t["_x"] = [_label(r, board.sweep_keys) for _, r in t.iterrows()]
    cats = sorted(t["_x"].unique(), key=_nkey)
    algos = _natural(t["algorithm"].unique())
    x0 = {d: i for i, d in enumerate(cats)}
    width = 0.8 / max(len(algos), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cats) + 3), 4.5))
    for j, (a, color) in enumerate(zip(algos, _colors(len(algos)), strict=True)):
        s = t[t["algorithm"] == a]
        x = np.array([x0[d] for d in s["_x"]]) - 0.4 + width * (j + 0.5)
        m = s[f"{p}_mean"].to_numpy(float)
        lo, hi = s[f"{p}_ci_low"].to_numpy(float), s[f"{p}_ci_high"].to_numpy(float)
        yerr = np.vstack([m - lo, hi - m])
        yerr = np.where(np.isnan(yerr), 0.0, yerr)  # n < 2: a point without a bar
        ax.errorbar(x, m, yerr=yerr, fmt=_MARKERS[j % len(_MARKERS)], color=color, capsize=3,
                    label=a)
    base = t[t["is_baseline"]]
    if len(base) and not np.isnan(base[f"{p}_mean"].iat[0]):
        ax.axhline(base[f"{p}_mean"].iat[0], color="grey", ls="--", lw=1,
                   label=f"baseline ({board.baseline[0]}/{board.baseline[1]})")
    ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 4 else 0, ha="right"
                  if len(cats) > 4 else "center")
    ax.set_xlabel("divergence" + (" (swept values)" if board.sweep_keys else ""))
    ax.set_ylabel(f"{p} (mean, {board.level:.0%} CI)")
    ax.set_title(f"{task}: {p} by divergence and algorithm")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, len(algos) + len(base), "algorithm")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _coef_order(g: pd.DataFrame, sweep_keys: list[str], x: str) -> pd.DataFrame:
    """A family's points in order of its coefficient: the first numeric swept key that varies
    within it, else by x."""
    for k in sweep_keys:
        v = pd.to_numeric(g[k], errors="coerce")
        if v.notna().all() and v.nunique() > 1:
            return g.assign(_o=v).sort_values("_o")
    return g.sort_values(x)


def _err(t: pd.DataFrame, m: str) -> np.ndarray:
    mean = t[f"{m}_mean"].to_numpy(float)
    if f"{m}_ci_low" not in t:
        return np.zeros((2, len(t)))
    e = np.vstack([mean - t[f"{m}_ci_low"].to_numpy(float),
                   t[f"{m}_ci_high"].to_numpy(float) - mean])
    return np.where(np.isnan(e), 0.0, e)


def plot_tradeoff(board: Board, task: str, path: Path, x: str, y: str, xlabel: str,
                  ylabel: str, title: str, base_point: tuple[float, float] | None) -> bool:
    """y against x per group, families joined in coefficient order; False when no group has
    both (no file)."""
    t = board.table[board.table["task"] == task]
    if f"{x}_mean" not in t or f"{y}_mean" not in t:
        return False
    t = t[t[f"{x}_mean"].notna() & t[f"{y}_mean"].notna()]
    if t.empty:
        return False
    divs = _natural(t["divergence"].unique())
    algos = _natural(t["algorithm"].unique())
    color_of = dict(zip(divs, _colors(len(divs)), strict=True))
    fig, ax = plt.subplots(figsize=(8, 5))
    for (a, d), g in t.groupby(["algorithm", "divergence"], sort=False):
        g = _coef_order(g, board.sweep_keys, f"{x}_mean")
        marker = _MARKERS[algos.index(a) % len(_MARKERS)]
        label = d if len(algos) == 1 else f"{a} / {d}"
        ax.errorbar(g[f"{x}_mean"], g[f"{y}_mean"], xerr=_err(g, x), yerr=_err(g, y),
                    fmt=marker + "-", color=color_of[d], capsize=2, lw=1.2, ms=5, label=label)
    base = t[t["is_baseline"]]
    if len(base):
        ax.scatter(base[f"{x}_mean"], base[f"{y}_mean"], marker="X", s=140, color="black",
                   zorder=5, label=f"baseline ({board.baseline[0]}/{board.baseline[1]})")
    if base_point is not None and not np.isnan(base_point[1]):
        ax.scatter([base_point[0]], [base_point[1]], marker="*", s=220, color="black",
                   zorder=5, label="base model (π₀)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, t.groupby(["algorithm", "divergence"]).ngroups + 2, "divergence")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_pass_at_k(board: Board, task: str, path: Path) -> bool:
    """pass@k against k per group, a panel per divergence; the base model's curve dashed."""
    t = board.table[board.table["task"] == task]
    ks = sorted(int(c[5:-5]) for c in t.columns if c.startswith("pass@") and c.endswith("_mean"))
    if len(ks) < 2:
        return False
    divs = _natural(t["divergence"].unique())
    ncol = min(4, len(divs))
    nrow = -(-len(divs) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False,
                             sharey=True)
    base = [t[f"base_pass@{k}_mean"].mean() if f"base_pass@{k}_mean" in t else np.nan
            for k in ks]
    for ax, d in zip(axes.flat, divs, strict=False):
        g = _coef_order(t[t["divergence"] == d], board.sweep_keys, "pass@1_mean")
        colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(g), 1)))
        for (_, r), c in zip(g.iterrows(), colors, strict=True):
            ax.plot(ks, [r[f"pass@{k}_mean"] for k in ks], marker=".", color=c,
                    label=_label(r, board.sweep_keys).removeprefix(d).strip() or r["algorithm"])
        ax.plot(ks, base, ls="--", color="black", label="base model")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(d, fontsize="medium")
        ax.grid(alpha=0.3)
        if len(g) <= 8:
            ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(divs):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("pass@k (mean over cells)")
    for ax in axes[-1, :]:
        ax.set_xlabel("k")
    fig.suptitle(f"{task}: pass@k by divergence (sampled at the rollout temperature)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_vs_length(board: Board, task: str, path: Path) -> bool:
    """False (and no file) when no group reports mean response tokens."""
    col = f"{RESPONSE_TOKENS}_mean"
    t = board.table[board.table["task"] == task]
    if col not in t or t[col].isna().all():
        return False
    p = board.primary
    divs = _natural(t["divergence"].unique())
    algos = _natural(t["algorithm"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    color_of = dict(zip(divs, _colors(len(divs)), strict=True))
    for j, a in enumerate(algos):  # one call per marker shape; colour = divergence
        s = t[t["algorithm"] == a]
        ax.scatter(s[col], s[f"{p}_mean"], c=[color_of[d] for d in s["divergence"]],
                   marker=_MARKERS[j % len(_MARKERS)], s=40, edgecolor="black", linewidth=0.4)
    # Two legends: colour = divergence, marker = algorithm.
    h_div = [plt.Line2D([], [], ls="", marker="o", color=c, label=d)
             for d, c in color_of.items()]
    h_alg = [plt.Line2D([], [], ls="", marker=_MARKERS[j % len(_MARKERS)], color="grey",
                        label=a) for j, a in enumerate(algos)]
    if len(divs) + len(algos) <= _MAX_LEGEND:
        first = ax.legend(handles=h_div, title="divergence", fontsize="small",
                          loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.add_artist(first)
        ax.legend(handles=h_alg, title="algorithm", fontsize="small", loc="lower left",
                  bbox_to_anchor=(1.01, 0.0))
    else:
        _legend(ax, len(divs) * len(algos), "group")
    ax.set_xlabel("mean response tokens")
    ax.set_ylabel(f"{p} (mean over seeds)")
    ax.set_title(f"{task}: {p} versus response length")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_curves(curves: pd.DataFrame, task: str, path: Path, eval_metric: str,
                sweep_keys: list[str] | None = None) -> bool:
    """False (and no file) when the task has no learning-curve rows."""
    c = curves[curves["task"] == task]
    if c.empty:
        return False
    sweep_keys = [k for k in (sweep_keys or []) if k in c.columns]
    c = c.assign(_g=[f"{r['algorithm']} / {_label(r, sweep_keys)}" for _, r in c.iterrows()])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    groups = sorted(c["_g"].unique(), key=_nkey)
    color_of = dict(zip(groups, _colors(len(groups)), strict=True))
    few = len(groups) <= _MAX_LEGEND  # markers only while lines can still be told apart
    panels = (("train_reward_mean", "train reward (mean over cells)"),
              (f"eval_{eval_metric}", f"eval {eval_metric} (mean over cells)"))
    for ax, (col, label) in zip(axes, panels, strict=True):
        sub = c.dropna(subset=[col]) if col in c else c.iloc[:0]
        rows = sub.groupby("_g").indices
        step, value = sub["step"].to_numpy(float), sub[col].to_numpy(float)
        for g in groups:
            if g in rows:
                i = rows[g]
                ax.plot(step[i], value[i], marker="." if few else None, color=color_of[g],
                        label=g)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{task}: {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
    _legend(axes[1], len(groups), "algorithm / divergence")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def write_plots(board: Board, curves: pd.DataFrame, out_dir: Path, eval_metric: str,
                cells: pd.DataFrame | None = None) -> list[Path]:
    """Write every plot for every task into out_dir; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    p = board.primary
    for task in sorted(board.table["task"].unique()):
        t = board.table[board.table["task"] == task]
        stem = f"{_safe(task)}_{_safe(p)}"
        path = out_dir / f"{stem}_ci.png"
        plot_ci(board, task, path)
        written.append(path)
        path = out_dir / f"{stem}_vs_length.png"
        if plot_vs_length(board, task, path):
            written.append(path)
        path = out_dir / f"{_safe(task)}_learning_curves.png"
        if plot_curves(curves, task, path, eval_metric, board.sweep_keys):
            written.append(path)
        base_y = t[f"base_{p}_mean"].mean() if f"base_{p}_mean" in t else np.nan
        path = out_dir / f"{_safe(task)}_frontier.png"
        if plot_tradeoff(board, task, path, "sqrt_kl", p, "√KL(π‖π₀) per token (drift from "
                         "the initial policy)", f"{p} (mean, {board.level:.0%} CI)",
                         f"{task}: {p} against drift from π₀", (0.0, base_y)):
            written.append(path)
        path = out_dir / f"{_safe(task)}_pass_at_k.png"
        if plot_pass_at_k(board, task, path):
            written.append(path)
        for drop in sorted(c[:-5] for c in t.columns if c.endswith("_drop_mean")):
            path = out_dir / f"{_safe(task)}_forgetting_{_safe(drop[:-5])}.png"
            if plot_tradeoff(board, task, path, "kl_pi0_pi", drop, "KL(π₀‖π) per token",
                             f"{drop[:-5]} accuracy drop (base − final; mean, CI)",
                             f"{task}: forgetting of {drop[:-5]} against KL(π₀‖π)",
                             (0.0, 0.0)):
                written.append(path)
    return written
