"""Board -> text: Markdown (README-ready), CSV, HTML and LaTeX. No file I/O here.

Markdown, HTML and LaTeX show the same compact display table (`display_table`); CSV carries
every numeric column of the Board at full useful precision.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from leaderboards.tables import REG_PG, REG_PG_GRAD, RESPONSE_TOKENS, SQRT_KL, Board

DASH = "—"


def _num(x, fmt: str) -> str:
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return format(x, fmt)


def _p(x: float) -> str:
    if isinstance(x, float) and math.isnan(x):
        return DASH
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def description(board: Board) -> str:
    """One paragraph saying what every column means; shared by all text formats."""
    better = {"max": "higher is better", "min": "lower is better"}.get(
        board.direction, "not ranked")
    text = (f"Primary metric {board.primary} ({better}): mean over base models of the mean over "
            f"RL seeds, ± std over completed cells (n; 'n (B bases)' when several); "
            f"{board.level:.0%} CI: two-level percentile bootstrap resampling base models, RL "
            f"seeds within each base and evaluation items, {board.n_boot:,} resamples (seed "
            f"{board.seed}). Spread: standard deviations between bases, between RL seeds of one "
            "base (variance components), and of the mean over the finite evaluation set.")
    if board.baseline is not None:
        text += (f" Δ: mean difference against the baseline {board.baseline[0]} / "
                 f"{board.baseline[1]} of the same task, paired by base and seed (the same "
                 "prompts and sampling streams), with its bootstrap CI; p: paired t-test (over "
                 "per-base mean differences when there are several bases); p (Holm): adjusted "
                 "across every comparison in the table; seeds needed: RL seeds per base for 80% "
                 "power at the observed Δ (∞: more bases needed).")
    return text + (" Yardstick columns (sampled evaluation and drift from the initial policy "
                   "π₀) are described in docs/results.md. Only completed cells are averaged; "
                   "failed, diverged, timed-out, incomplete and invalid cells are counted under "
                   "flags.")


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _seeds(x: float) -> str:
    if isinstance(x, float) and math.isnan(x):
        return DASH
    return "∞" if math.isinf(x) else f"{int(x)}"


def _sd(v: float) -> str:
    return DASH if v is None or (isinstance(v, float) and math.isnan(v)) else f"{math.sqrt(v):.3f}"


def display_table(board: Board) -> pd.DataFrame:
    """The table as formatted strings, one row per group, in Board order."""
    t, p = board.table, board.primary
    ci = f"{board.level:.0%} CI"
    cols = {"#": [_num(r, "d") for r in t[f"{p}_rank"]],
            "task": t["task"], "algorithm": t["algorithm"], "divergence": t["divergence"]}
    for k in board.sweep_keys:
        cols[_short(k)] = [DASH if _isnan(v) else (format(v, "g") if isinstance(v, float)
                                                   else str(v)) for v in t[k]]
    out = pd.DataFrame(cols)
    out[f"{p} (mean ± std)"] = [
        DASH if math.isnan(m) else (f"{m:.3f}" if math.isnan(s) else f"{m:.3f} ± {s:.3f}")
        for m, s in zip(t[f"{p}_mean"], t[f"{p}_std"], strict=True)]
    out[ci] = [DASH if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"
               for lo, hi in zip(t[f"{p}_ci_low"], t[f"{p}_ci_high"], strict=True)]
    out["n"] = [f"{n} ({b} bases)" if b > 1 else str(n)
                for n, b in zip(t["n"], t["n_bases"], strict=True)]
    out["spread: base / seed / items"] = [
        f"{_sd(b)} / {_sd(s)} / {_sd(i)}" for b, s, i in
        zip(t[f"{p}_var_base"], t[f"{p}_var_seed"], t[f"{p}_var_items"], strict=True)]
    if board.baseline is not None:
        out["Δ vs baseline"] = [
            "baseline" if b else (_num(d, "+.3f") if math.isnan(lo) else
                                  f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            for b, d, lo, hi in zip(t["is_baseline"], t[f"{p}_diff"], t[f"{p}_diff_ci_low"],
                                    t[f"{p}_diff_ci_high"], strict=True)]
        out["p"] = [DASH if note == "baseline" else
                    (_p(v) if not note else f"{_p(v)} ({note})")
                    for v, note in zip(t[f"{p}_p_value"], t["p_note"], strict=True)]
        out["p (Holm)"] = [_p(v) for v in t[f"{p}_p_adj"]]
        out["seeds needed"] = [DASH if b else _seeds(x)
                               for b, x in zip(t["is_baseline"], t["seeds_needed"], strict=True)]
    for m, label in _yardstick_columns(t):
        out[label] = [_num(x, ".3g" if m.startswith(("kl_", "sqrt")) else ".3f")
                      for x in t[f"{m}_mean"]]
    if f"{RESPONSE_TOKENS}_mean" in t and p != RESPONSE_TOKENS:
        out["resp. tokens"] = [_num(x, ".1f") for x in t[f"{RESPONSE_TOKENS}_mean"]]
    if f"{REG_PG}_mean" in t and p != REG_PG:
        out["|reg|/|pg|"] = [_num(x, ".3g") for x in t[f"{REG_PG}_mean"]]
    if f"{REG_PG_GRAD}_mean" in t:
        out["‖∇reg‖/‖∇pg‖"] = [_num(x, ".3g") for x in t[f"{REG_PG_GRAD}_mean"]]
    out["wall (s)"] = [_num(x, ".1f") for x in t["wall_time_s_mean"]]
    out["flags"] = t["flags"]
    return out.reset_index(drop=True)


def _yardstick_columns(t: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, label) of the yardstick columns present: pass@1, pass@K, mean@K, sqrt(KL),
    KL(pi_0 || pi), entropy, and each retention task's drop."""
    have = {c[:-5] for c in t.columns if c.endswith("_mean")}
    ks = sorted(int(m[5:]) for m in have if m.startswith("pass@"))
    cols = []
    if ks:
        cols.append(("pass@1", "pass@1")) if 1 in ks else None
        if ks[-1] != 1:
            cols.append((f"pass@{ks[-1]}", f"pass@{ks[-1]}"))
    cols += [(m, m) for m in sorted(have) if m.startswith("mean@")]
    cols += [(m, lab) for m, lab in ((SQRT_KL, "√KL(π‖π₀)"), ("kl_pi0_pi", "KL(π₀‖π)"),
                                     ("entropy", "entropy")) if m in have]
    cols += [(m, f"{m[:-5]} drop") for m in sorted(have) if m.endswith("_drop")]
    return cols


def _isnan(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def budget_table(board: Board) -> pd.DataFrame:
    """The matched-budget table as formatted strings (empty when the grid has no sweeps)."""
    b = board.budgets
    if b is None or b.empty:
        return pd.DataFrame()
    out = pd.DataFrame({"task": b["task"], "algorithm": b["algorithm"],
                        "divergence": b["divergence"],
                        "√KL budget": [format(x, "g") for x in b["budget"]],
                        "sweep points": b["points"].astype(str)})
    metrics = [c for c in b.columns if c not in ("task", "algorithm", "divergence", "budget",
                                                 "points") and "_" not in c.replace("@", "")]
    for m in metrics:
        out[f"{m} [CI]"] = [
            DASH if math.isnan(v) else (f"{v:.3f}" if math.isnan(lo) else
                                        f"{v:.3f} [{lo:.3f}, {hi:.3f}]")
            for v, lo, hi in zip(b[m], b[f"{m}_ci_low"], b[f"{m}_ci_high"], strict=True)]
        vs = [c for c in b.columns if c.startswith(f"{m}_vs_")
              and not c.endswith(("_ci_low", "_ci_high", "_p", "_p_adj"))]
        for c in vs:
            ref = c.split("_vs_")[1]
            out[f"{m} − {ref}"] = [
                DASH if math.isnan(d) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                for d, lo, hi in zip(b[c], b[f"{c}_ci_low"], b[f"{c}_ci_high"], strict=True)]
            # one p column per metric: a shared name would let the last metric overwrite the first
            out[f"{m} p (Holm)"] = [_p(v) for v in b[f"{c}_p_adj"]]
    return out


def budget_markdown(board: Board) -> str:
    d = budget_table(board)
    if d.empty:
        return ""
    lines = ["# Matched KL budgets", "",
             "Each divergence's metrics where its own coefficient sweep reaches the same drift "
             "√KL(π‖π₀) from the initial policy (linear interpolation between neighbouring sweep "
             "points, never extrapolated), with two-level bootstrap CIs; differences to the "
             "reference divergence are paired bootstraps, Holm-adjusted across the table.", "",
             "| " + " | ".join(c.replace("|", "\\|") for c in d.columns) + " |",
             "|" + "|".join("---" if c in _LEFT else "--:" for c in d.columns) + "|"]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


_LEFT = {"task", "algorithm", "divergence", "flags"}


def to_markdown(board: Board) -> str:
    d = display_table(board)
    esc = [c.replace("|", "\\|") for c in d.columns]
    lines = [f"# {board.title}", "", description(board), "",
             "| " + " | ".join(esc) + " |",
             "|" + "|".join("---" if c in _LEFT else "--:" for c in d.columns) + "|"]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    if board.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in board.notes]
    if board.problems:
        lines += ["", "Files excluded or partly read (paths relative to the results directory):",
                  ""] + [f"- `{p.path}`: {p.message}" for p in board.problems]
    return "\n".join(lines) + "\n"


def to_csv(board: Board) -> str:
    # 10 significant digits: full useful precision, and the same text on every platform
    # (bootstrap means go through BLAS, whose summation order may differ in the last bit).
    return board.table.to_csv(index=False, float_format="%.10g", lineterminator="\n")


def _html_table(d: pd.DataFrame) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in d.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>"
                     for row in d.itertuples(index=False))
    return (f'<table class="leaderboard">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
            "</tbody>\n</table>")


def to_html(board: Board) -> str:
    """A standalone page: title, description, the table, notes and excluded files."""
    table = _html_table(display_table(board))
    notes = ""
    if board.notes:
        notes = "<h2>Notes</h2>\n<ul>\n" + "".join(
            f"<li>{html.escape(n)}</li>\n" for n in board.notes) + "</ul>\n"
    if board.problems:
        notes += "<h2>Files excluded or partly read</h2>\n<ul>\n" + "".join(
            f"<li><code>{html.escape(p.path)}</code>: {html.escape(p.message)}</li>\n"
            for p in board.problems) + "</ul>\n"
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(board.title)}</title>\n<style>"
        "body{font-family:sans-serif;margin:2em}"
        "table.leaderboard{border-collapse:collapse}"
        "table.leaderboard td,table.leaderboard th{padding:.25em .6em;"
        "border-bottom:1px solid #ddd;text-align:right}"
        "table.leaderboard td:nth-child(n+2):nth-child(-n+4),"
        "table.leaderboard td:last-child{text-align:left}"
        "</style></head><body>\n"
        f"<h1>{html.escape(board.title)}</h1>\n<p>{html.escape(description(board))}</p>\n"
        f"{table}\n{notes}</body></html>\n")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "|": r"\textbar{}", "<": r"$<$", ">": r"$>$",
        "±": r"$\pm$", "Δ": r"$\Delta$", "—": "--"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def to_latex(board: Board) -> str:
    """A `table` float with a booktabs `tabular` (needs \\usepackage{booktabs})."""
    d = display_table(board)
    spec = "".join("l" if c in _LEFT else "r" for c in d.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(tex_escape(c) for c in d.columns) + r" \\", r"\midrule"]
    prev = None
    for row in d.itertuples(index=False):
        if prev is not None and row.task != prev:
            lines.append(r"\midrule")
        prev = row.task
        lines.append(" & ".join(tex_escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{{tex_escape(board.title)}. {tex_escape(description(board))}}}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"
