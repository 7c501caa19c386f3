"""`report.html`: the leaderboard as one self-contained page, opened from disk.

Everything is inline: the data as JSON, the style sheet and script from `report_assets/`, PNG
plots as base64 data URIs and SVG plots as inline `<svg>`. A Content-Security-Policy of
`default-src 'none'` makes the browser refuse any network request, so the page cannot depend
on one by accident. No torch and no matplotlib: plots arrive as files already written.

What the page does (report_assets/report.js): every table sorts by any column (numbers as
numbers, a mean keeps its ± std and CI text) and is paginated; one filter bar (a select per
group key, a search box, "significant only") filters every table that has those keys. The
baseline row is marked, and a difference whose p-value is below 0.05 (the Holm-adjusted
`<m>_p_adj` when the table has one, else the raw `<m>_p_value`) is coloured by its direction.
A row opens its cells: per seed (and per base or any other extra cell column) the status, the
metrics, the learning curve, the resolved config (the keys that differ across the grid
highlighted) and, for a cell that did not complete, its reason and log tail.

The table model (leaderboards/report_data.py) is generic over the Board's columns, so new
metrics, key columns and tables need no change: leading columns before the first
`<primary>_...` column are group keys (or `Board.keys`, or the `keys` argument); `<m>_mean`
takes `<m>_std` and `<m>_ci_low/high` into one cell; `<m>_diff` pairs with `<m>_p_adj` (else
`<m>_p_value`); `is_baseline` marks a row; `n_<status>` counts start hidden (the column menu
shows them). Any cell column beyond the fixed ones (`base`, a swept key) is shown per cell.

Size and speed at 10,000 cells (`pytest tests/test_report.py -m slow -s`: a synthetic grid of
2 tasks x 5 algorithms x 100 divergences x 10 seeds = 1,000 groups, 40 train steps and 5
evaluations per cell, 1% failed with a 7-line log tail, no plots; a 2-core AMD EPYC shared
at load average ~8): the page is 5.9 MB (585 B per cell: metrics, the config keys that differ
across the grid, a learning curve of at most 32 points) and `write_report` takes 2.4-4.9 s
(`load` 1.7-3.6 s). Headless Chromium opens it in 0.7-1.2 s and sorts or filters the 1,000 rows in
10-90 ms; it draws 100 rows a page (all 1,000 at once: 0.5-1.7 s).
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from leaderboards.reading import Results
from leaderboards.render import description
from leaderboards.report_data import (
    cell_curves,
    group_curves,
    group_keys,
    json_values,
    split_configs,
    table_payload,
)
from leaderboards.tables import Board

LOG_LINES, LOG_CHARS = 40, 6000  # the tail of a cell's log kept for a cell that did not finish
SIG_LEVEL = 0.05
# Per-cell columns shown in fixed places; any other non-metric, non-key column of the cells
# table (`base`, a swept config key) is shown after the seed.
_CELL_INFO = ("task", "algorithm", "divergence", "seed", "cell_id", "status", "reason",
              "diverged_step", "wall_time_s", "path")
_RASTER = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
           ".gif": "image/gif", ".webp": "image/webp"}
# A plot whose file name has the first word goes next to a table whose title has one of the rest.
_NEAR = (("frontier", ("matched", "budget", "frontier")), ("pass", ("pass@", "pass_at", "pass")))


# ---- files: the only reading this module does --------------------------------------------

def read_cell_files(root: Path, paths: Sequence[str],
                    statuses: Sequence[str]) -> tuple[list[dict | None], list[str | None],
                                                      list[str | None]]:
    """Per cell: (flattened resolved config, log tail, git revision), each None when absent.

    The config is result.json's `config`, else the cell's config.toml (a cell that never
    finished); the log tail is result.json's `log_tail`, else the end of log.txt, and is kept
    only for cells whose status is not `completed`. `paths` are result.json paths relative to
    root (the `path` column of `Results.cells`).
    """
    configs, logs, gits = [], [], []
    for rel, status in zip(paths, statuses, strict=True):
        cell_dir = os.path.join(root, os.path.dirname(rel))
        data = _json_object(os.path.join(root, rel))
        cfg = data.get("config")
        if not isinstance(cfg, dict):
            cfg = _toml_object(os.path.join(cell_dir, "config.toml"))
        configs.append(_flatten(cfg) if cfg else None)
        log = None
        if status != "completed":
            log = data.get("log_tail")
            if not (isinstance(log, str) and log.strip()):
                log = _tail(os.path.join(cell_dir, "log.txt"))
            log = "\n".join(log.splitlines()[-LOG_LINES:])[-LOG_CHARS:] if log else None
        logs.append(log)
        prov = data.get("provenance")
        git = prov.get("git_hash") if isinstance(prov, dict) else None
        if isinstance(git, str) and git:
            git = git[:10] + ("+dirty" if prov.get("git_dirty") else "")
        gits.append(git if isinstance(git, str) else None)
    return configs, logs, gits


def _json_object(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read())
    except (OSError, ValueError):  # missing, unreadable or not JSON: `load` reported it
        return {}
    return d if isinstance(d, dict) else {}


def _toml_object(path: str) -> dict | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, ValueError):
        return None


def _tail(path: str, nbytes: int = 16_384) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return None


_LEAF = {str, int, bool, type(None)}


def _leaf(v: Any) -> Any:
    """A config value as JSON can hold it: non-finite floats and TOML dates become text."""
    t = type(v)
    if t in _LEAF:
        return v
    if t is float:
        return v if math.isfinite(v) else str(v)
    if t is list:
        return [_leaf(x) for x in v]
    if t is dict:  # an empty table, or a table inside an array
        return {str(k): _leaf(x) for k, x in v.items()}
    return str(v)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; an empty table stays a leaf."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if type(v) is dict and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = _leaf(v)
    return out


def _read_plot(path: Path) -> bytes:
    return Path(path).read_bytes()


@functools.cache
def _asset(name: str) -> str:
    return resources.files("leaderboards").joinpath("report_assets", name).read_text("utf-8")


# ---- plots ---------------------------------------------------------------------------------

def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9@]+", text.lower()) if len(w) >= 4}


def place_plot(stem: str, tables: Sequence[tuple[str, str]], ignore: set[str]) -> str:
    """Section id for a plot file stem: the leaderboard for `*_ci`, the curves section for
    `*curve*`, a table whose title matches (`_NEAR`, then any shared word), else `plots`."""
    s = stem.lower()
    if re.search(r"(^|_)ci$", s):
        return "board"
    if "curve" in s:
        return "curves"
    for word, hints in _NEAR:
        if word in s:
            for title, sid in tables:
                if any(h in title.lower() for h in hints):
                    return sid
    words = _words(s) - ignore
    return next((sid for title, sid in tables if words & _words(title)), "plots")


def _scope_css(css: str, fid: str) -> str:
    css = css.replace("<![CDATA[", "").replace("]]>", "")
    return re.sub(r"([^{}@;]+)\{", lambda m: ",".join(
        f"#{fid} {s.strip()}" for s in m[1].split(",")) + "{", css)


def _inline_svg(text: str, fid: str) -> str:
    """An SVG file as markup for an HTML page: no prolog, doctype or metadata; ids prefixed
    with `fid` so several figures coexist; its style rules confined to the figure."""
    text = re.sub(r"<\?xml.*?\?>|<!DOCTYPE[^>]*>|<!--.*?-->|<metadata\b.*?</metadata>", "",
                  text, flags=re.S)
    ids = set(re.findall(r'\bid="([^"]+)"', text))
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{fid}-{m[1]}"', text)
    text = re.sub(r'(href="#|url\(#)([^")]+)',
                  lambda m: m[1] + (f"{fid}-{m[2]}" if m[2] in ids else m[2]), text)
    return re.sub(r"(<style[^>]*>)(.*?)(</style>)",
                  lambda m: m[1] + _scope_css(m[2], fid) + m[3], text, flags=re.S).strip()


def _figure(path: Path, fid: str, tasks: Sequence[str]) -> str:
    path = Path(path)
    suffix, esc = path.suffix.lower(), html.escape
    if suffix == ".svg":
        body = f'<div class="svg" id="{fid}">{_inline_svg(_read_plot(path).decode(), fid)}</div>'
    elif suffix in _RASTER:
        b64 = base64.b64encode(_read_plot(path)).decode("ascii")
        body = f'<img src="data:{_RASTER[suffix]};base64,{b64}" alt="{esc(path.stem)}">'
    else:
        raise ValueError(f"plot {str(path)!r}: cannot inline {suffix or 'a file without a '}"
                         f"suffix; accepted: .svg, {', '.join(_RASTER)}")
    safe = {re.sub(r"[^A-Za-z0-9_.-]+", "-", t): t for t in tasks}
    task = next((safe[s] for s in sorted(safe, key=len, reverse=True)
                 if path.stem.startswith(f"{s}_")), "")
    return (f'<figure class="plot" data-task="{esc(task)}">{body}'
            f"<figcaption>{esc(path.name)}</figcaption></figure>")


# ---- the page ------------------------------------------------------------------------------

def render_report(results: Results, board: Board, seeds: pd.DataFrame, curves: pd.DataFrame,
                  extra_tables: Mapping[str, pd.DataFrame] | None = None,
                  plots: Sequence[str | os.PathLike] | None = None, *,
                  keys: Sequence[str] | None = None) -> str:
    """The report page as one HTML string (see the module docstring).

    results: from `load` (its root, per-cell curves and metric directions). board, seeds,
    curves: as `make_board` returns them (seeds: one row per cell; curves: mean curves per
    group). extra_tables: title -> DataFrame, shown after the leaderboard, sortable and
    filterable like it. plots: PNG or SVG files, each placed next to the table it explains.
    keys: the group-key columns of the board (inferred when None, see `group_keys`).
    """
    keys = group_keys(board, keys)
    seeds = seeds.reset_index(drop=True)
    cell_keys = [k for k in keys if k in seeds.columns]
    cell_index: dict[tuple, list[int]] = {}
    for i, t in enumerate(zip(*(seeds[k].astype(str) for k in cell_keys), strict=True)):
        cell_index.setdefault(t, []).append(i)
    directions = dict(results.directions)
    named = [("board", board.title, board.table)] + [
        (f"t{n}", str(title), df) for n, (title, df) in enumerate((extra_tables or {}).items(), 1)]
    tables = [table_payload(tid, title, df, keys, board.primary, directions, cell_index,
                            cell_keys) for tid, title, df in named]
    names, tables[0]["curves"] = group_curves(curves, board.table, keys)

    metrics = [m for m in sorted(directions) if m in seeds.columns]
    extras = [c for c in seeds.columns
              if c not in _CELL_INFO and c not in metrics and c not in keys]
    info = [c for c in ("cell_id", "seed", *extras, "status", "reason", "diverged_step",
                        "wall_time_s", *metrics) if c in seeds.columns]
    paths = (seeds["path"].astype(str) if "path" in seeds
             else seeds["cell_id"].astype(str) + "/result.json")
    configs, logs, gits = read_cell_files(Path(results.root), list(paths),
                                          list(seeds["status"].astype(str)))
    common, diffs = split_configs(configs)
    eval_metric = board.primary if board.primary in results.curves.columns else "accuracy"
    curve_names, per_cell = cell_curves(results.curves, list(seeds["cell_id"]), eval_metric)
    data = {
        "title": board.title, "primary": board.primary, "direction": board.direction,
        "level": board.level, "baseline": board.baseline, "keys": keys,
        "directions": directions, "sig_level": SIG_LEVEL, "tables": tables,
        "group_curve_names": names,
        "cells": {"cols": info, "metrics": metrics, "extras": extras,
                  "rows": [list(r) for r in zip(*(json_values(seeds[c]) for c in info),
                                                strict=True)],
                  "log": logs, "git": gits, "cfg_common": common, "cfg": diffs,
                  "curve_names": curve_names, "curve": per_cell},
    }
    # Section ids first, so that plots can be placed next to their table.
    titles = [(t["title"], t["id"]) for t in tables[1:]]
    tasks = sorted({str(t) for t in board.table["task"]}) if "task" in board.table else []
    ignore = {w for t in tasks for w in _words(t)} | _words(board.primary)
    figures: dict[str, list[str]] = {}
    for i, p in enumerate(plots or []):
        figures.setdefault(place_plot(Path(p).stem, titles, ignore), []).append(
            _figure(Path(p), f"fig{i}", tasks))
    return _page(board, seeds, data, figures)


def _section(sid: str, title: str, figs: list[str], host: bool, intro: str = "") -> str:
    esc = html.escape
    body = f'<div class="table-host" data-table="{sid}"></div>' if host else ""
    figs_html = f'<div class="figs">{"".join(figs)}</div>' if figs else ""
    return (f'<section id="sec-{sid}"><h2>{esc(title)}</h2>{intro}{body}{figs_html}'
            "</section>\n")


def _page(board: Board, seeds: pd.DataFrame, data: dict, figures: dict[str, list[str]]) -> str:
    esc = html.escape
    counts = seeds["status"].value_counts()
    status = ", ".join(f"{n:,} {s}" for s, n in counts.items())
    n_groups = len(board.table)
    head = (f"<header><h1>{esc(board.title)}</h1><p class=\"desc\">{esc(description(board))}"
            f"</p><p class=\"summary\">{n_groups:,} groups, {len(seeds):,} cells: {status}.</p>"
            "</header>\n")
    parts = [_section("board", "Leaderboard", figures.pop("board", []), True)]
    for t in data["tables"][1:]:
        parts.append(_section(t["id"], t["title"], figures.pop(t["id"], []), True))
    curve_figs = figures.pop("curves", [])
    if curve_figs:
        parts.append(_section("curves", "Learning curves", curve_figs, False,
                              "<p>Mean over completed seeds; a row of a table above opens "
                              "each cell's own curve.</p>"))
    rest = [f for figs in figures.values() for f in figs]
    if rest:
        parts.append(_section("plots", "Plots", rest, False))
    notes = ""
    if board.notes:
        notes += "<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in board.notes) + \
            "</ul>"
    if board.problems:
        notes += ("<h2>Files excluded or partly read</h2><ul>" + "".join(
            f"<li><code>{esc(p.path)}</code>: {esc(p.message)}</li>" for p in board.problems)
            + "</ul>")
    if notes:
        parts.append(f'<section id="sec-notes">{notes}</section>\n')
    # "<" escaped inside JSON strings, so no "</script>" can end the data block early.
    blob = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c")
    script = _asset("report.js")
    if "</script" in script.lower():
        raise ValueError("report_assets/report.js must not contain '</script'")
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           "script-src 'unsafe-inline'")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<link rel="icon" href="data:,"><title>{esc(board.title)}</title>\n'
        f"<style>\n{_asset('report.css')}</style></head>\n<body>\n{head}"
        '<nav id="filters" class="filters" aria-label="filters"></nav>\n'
        "<noscript><p class=\"warn\">This page draws its tables with JavaScript; the same "
        "numbers are in leaderboard.md and leaderboard.csv beside it.</p></noscript>\n"
        f"<main>\n{''.join(parts)}</main>\n"
        f'<script type="application/json" id="report-data">{blob}</script>\n'
        f"<script>\n{script}</script>\n</body></html>\n")


def write_report(path: str | os.PathLike, results: Results, board: Board, seeds: pd.DataFrame,
                 curves: pd.DataFrame, extra_tables: Mapping[str, pd.DataFrame] | None = None,
                 plots: Sequence[str | os.PathLike] | None = None, *,
                 keys: Sequence[str] | None = None) -> Path:
    """Write `render_report(...)` to path atomically (temp file + rename); return the path."""
    text = render_report(results, board, seeds, curves, extra_tables, plots, keys=keys)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a page
    return path


__all__ = ["place_plot", "read_cell_files", "render_report", "write_report"]
