"""Leaderboards from stored grid results: tables, statistics and plots, without torch.

`load(results_dir)` is the only function that reads files; `summarize`, `seed_table` and
`curve_table` are DataFrame -> DataFrame; `to_markdown` / `to_csv` / `to_html` / `to_latex`
render a Board as text; `build(results_dir, out_dir)` writes all of it. Dependencies: the
standard library, numpy, pandas, scipy and (for plots only) matplotlib.

Names are imported on first use, so `import leaderboards.cli` stays cheap for command lines.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "reading": ("load", "Results", "Problem", "LeaderboardWarning"),
    "tables": ("summarize", "seed_table", "curve_table", "Board"),
    "stats": ("bootstrap_ci", "welch_ttest", "rank"),
    "render": ("to_markdown", "to_csv", "to_html", "to_latex"),
    "writing": ("build", "make_board", "write_tables", "Summary"),
    "plots": ("write_plots",),
    "report": ("render_report", "write_report"),
}
_EXPORTS = {name: mod for mod, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'leaderboards' has no attribute {name!r}")
    return getattr(importlib.import_module(f"leaderboards.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
