"""`build`: load a results directory and write every leaderboard format and plot."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from leaderboards.reading import Problem, Results, load
from leaderboards.render import budget_markdown, to_csv, to_html, to_latex, to_markdown
from leaderboards.tables import Board, curve_table, matched_budget_table, seed_table, summarize


@dataclass
class Summary:
    """What `build` produced. `files` are the paths written: tables, report.html, then plots."""

    out_dir: Path
    board: Board
    seeds: pd.DataFrame
    curves: pd.DataFrame
    markdown: str
    problems: list[Problem]
    files: list[Path] = field(default_factory=list)


def parse_baseline(text: str) -> tuple[str, str]:
    """`ALGO:DIV` -> (algorithm, divergence)."""
    algo, sep, div = text.partition(":")
    if not sep or not algo or not div or ":" in div:
        raise ValueError(f"baseline {text!r} must be ALGORITHM:DIVERGENCE, e.g. dr_grpo:none")
    return algo, div


def make_board(results: Results, baseline: str | tuple[str, str] | None = None,
               metric: str | None = None, *, n_boot: int = 10_000, seed: int = 0,
               budgets: list[float] | None = None, budget_reference: str | None = "kl_k3",
               ) -> tuple[Board, pd.DataFrame, pd.DataFrame]:
    """Results -> (Board, per-seed table, learning-curve table).

    `baseline` and `metric` override the manifest's; an override that matches nothing raises
    ValueError listing what exists.
    """
    cells = results.cells
    if metric is not None and results.directions and metric not in results.directions:
        raise ValueError(f"metric {metric!r} is in no result; available: "
                         f"{', '.join(sorted(results.directions))}")
    primary = metric or results.primary_metric
    if isinstance(baseline, str):
        baseline = parse_baseline(baseline)
    if baseline is not None:
        pairs = set(zip(cells["algorithm"], cells["divergence"], strict=True))
        if tuple(baseline) not in pairs:
            shown = ", ".join(f"{a}:{d}" for a, d in sorted(pairs)[:20])
            raise ValueError(f"baseline {baseline[0]}:{baseline[1]} matches no cell; "
                             f"available: {shown}")
    else:
        baseline = results.baseline
    board = summarize(cells, results.directions, primary, baseline,
                      sweep_keys=results.sweep_keys, items=results.items, n_boot=n_boot,
                      seed=seed)
    if results.grid_name:
        board.title = f"Leaderboard: {results.grid_name}"
    board.problems = list(results.problems)
    board.budgets = matched_budget_table(cells, board, results.items, budgets=budgets,
                                         reference=budget_reference)
    eval_metric = primary if primary in results.curves.columns else "accuracy"
    return board, seed_table(cells), curve_table(results.curves, cells, eval_metric,
                                                 results.sweep_keys)


def write_tables(board: Board, seeds: pd.DataFrame, curves: pd.DataFrame,
                 out_dir: Path) -> tuple[str, list[Path]]:
    """Write leaderboard.{md,csv,html,tex}, seeds.csv and curves.csv; return (markdown, paths)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = to_markdown(board)
    texts = {"leaderboard.md": md, "leaderboard.csv": to_csv(board),
             "leaderboard.html": to_html(board), "leaderboard.tex": to_latex(board),
             # Values as read (seeds) or plain means (curves): shortest round-trip repr.
             "seeds.csv": seeds.to_csv(index=False, lineterminator="\n"),
             "curves.csv": curves.to_csv(index=False, lineterminator="\n")}
    if board.budgets is not None and not board.budgets.empty:
        texts["matched_budget.md"] = budget_markdown(board)
        texts["matched_budget.csv"] = board.budgets.to_csv(index=False, float_format="%.10g",
                                                           lineterminator="\n")
    paths = []
    for name, text in texts.items():
        path = out_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # readers never see half a file
        paths.append(path)
    return md, paths


def build(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
          baseline: str | tuple[str, str] | None = None, metric: str | None = None, *,
          plots: bool = True, n_boot: int = 10_000, seed: int = 0,
          budgets: list[float] | None = None, budget_reference: str | None = "kl_k3",
          ) -> Summary:
    """Load results_dir and write every table (and plots, under out_dir/plots/).

    out_dir defaults to results_dir/leaderboard. `baseline` ("ALGO:DIV" or a tuple) and
    `metric` override the manifest's. Problem files are excluded and listed in the result,
    in the Markdown notes and in a LeaderboardWarning.
    """
    results = load(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "leaderboard"
    board, seeds, curves = make_board(results, baseline, metric, n_boot=n_boot, seed=seed,
                                      budgets=budgets, budget_reference=budget_reference)
    md, files = write_tables(board, seeds, curves, out)
    plot_files: list[Path] = []
    if plots:
        from leaderboards.plots import write_plots  # matplotlib only when plotting

        eval_metric = board.primary if f"eval_{board.primary}" in curves else "accuracy"
        plot_files = write_plots(board, curves, out / "plots", eval_metric, results.cells)
    from leaderboards.report import write_report

    extra = ({"Matched KL budgets": board.budgets}
             if board.budgets is not None and not board.budgets.empty else None)
    files.append(write_report(out / "report.html", results, board, seeds, curves, extra,
                              plot_files))
    files += plot_files
    return Summary(out_dir=out, board=board, seeds=seeds, curves=curves, markdown=md,
                   problems=results.problems, files=files)
