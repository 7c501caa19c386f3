"""The report's data model: Board, cells and curves as JSON-ready lists, no I/O, no HTML.

`report.js` reads what these functions return. Tables are generic over their columns:
`view_columns` decides how each column is shown (a key, a mean folding its std and CI, a
difference paired with its p-value, a count, text) from its name and dtype alone, so new
metrics and key columns need no change here. Numbers are rounded to the digits a reader can
use (6 significant digits in tables, 3 or 4 in curves) to keep a 10,000-cell page small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from leaderboards.reading import STATUSES
from leaderboards.tables import KEYS, Board

# A per-cell learning curve is thinned evenly to this many points and 3 significant digits:
# its sparkline is ~120 x 26 px. Mean curves per group keep 4 digits.
CURVE_POINTS = 32
# Where the primary metric's columns go, after the keys (n: 3; every other column: 8, in the
# table's order).
_LEAD = {"_rank": 1, "_mean": 2, "_diff": 4, "_p_value": 5, "_p_adj": 6}
# p-value column suffixes, in the order that decides significance (adjusted first).
_P_SUFFIXES = ("_p_adj", "_p_value", "_p")
# Column suffixes that belong to a metric `<m>`; the longest match wins (`_diff_ci_low`).
_SUFFIXES = ("_ci_low", "_ci_high", "_p_value", "_p_adj", "_p_note", "_diff", "_mean", "_std",
             "_rank")


def group_keys(board: Board, keys: Sequence[str] | None = None) -> list[str]:
    """The board's group-key columns: `keys`, else `board.keys` if it has one, else the
    leading columns before the first `<primary>_...` column (task, algorithm, divergence and
    any swept config key placed beside them)."""
    cols = list(board.table.columns)
    keys = keys if keys is not None else getattr(board, "keys", None)
    if keys is not None:
        missing = [k for k in keys if k not in cols]
        if missing:
            raise ValueError(f"group keys {missing} are not columns of the board table; "
                             f"its columns are {cols}")
        return list(keys)
    out = []
    for c in cols:
        if c.startswith(f"{board.primary}_") or c in ("n", "flags", "is_baseline"):
            break
        out.append(c)
    return out or [k for k in KEYS if k in cols]


def _split(col: str) -> tuple[str, str]:
    for suffix in _SUFFIXES:
        if col.endswith(suffix) and len(col) > len(suffix):
            return col[:-len(suffix)], suffix
    return col, ""


def round_sig(a: np.ndarray, sig: int) -> list:
    """Floats rounded to `sig` significant digits as Python floats; NaN and inf -> None.

    Vectorised, and each value is the double nearest the rounded decimal (scaling by an exact
    power of ten on the side that has one), so JSON prints it short: 0.8483, not 0.84830001.
    """
    a = np.asarray(a, dtype=float)
    finite = np.isfinite(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(finite & (a != 0), np.floor(np.log10(np.abs(a))), 0.0)
        shift = sig - 1 - mag  # decimals to keep; negative for large values
        up = 10.0 ** np.abs(shift)
        r = np.where(shift >= 0, np.round(a * up) / up, np.round(a / up) * up)
    out = r.tolist()
    if not finite.all():
        for i in np.flatnonzero(~finite):
            out[i] = None
    return out


def json_values(s: pd.Series, sig: int = 6) -> list:
    """A column as JSON values: floats to `sig` significant digits, NaN/inf/NA -> null."""
    if pd.api.types.is_bool_dtype(s):
        return [None if v is pd.NA else bool(v) for v in s]
    if pd.api.types.is_integer_dtype(s):
        return [None if v is pd.NA else int(v) for v in s]
    if pd.api.types.is_float_dtype(s):
        return round_sig(s.to_numpy(float), sig)
    return [None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
            else v if isinstance(v, (str, int, float, bool)) else str(v) for v in s]


def _p_owner(c: str, pos: Mapping[str, int]) -> str | None:
    """The difference column that p-value column `c` tests ("" when it is not in the table),
    or None when `c` is no p-value: `<m>_p_value` / `<m>_p_adj` test `<m>_diff` (the board),
    `<d>_p` / `<d>_p_adj` test a difference column `<d>` (e.g. `accuracy_vs_kl_k3`)."""
    for suf in _P_SUFFIXES:
        if c.endswith(suf) and len(c) > len(suf):
            base = c[:-len(suf)]
            if f"{base}_diff" in pos:
                return f"{base}_diff"
            if base in pos:
                return base
            return None if suf == "_p" else ""
    return None


def _direction(col: str, directions: Mapping[str, str]) -> str:
    """The direction of the metric a column is about: the longest metric name it starts with."""
    best = max((m for m in directions if col == m or col.startswith(f"{m}_")), key=len,
               default=None)
    return directions[best] if best is not None else "none"


def view_columns(df: pd.DataFrame, keys: Sequence[str], primary: str,
                 directions: Mapping[str, str]) -> list[dict]:
    """How each column is shown: {c: index, label, kind, ...} with the indices of the columns
    folded into it (std, lo/hi for a CI, p for a difference, d and note for a p-value).

    A difference is `<m>_diff` or any column with a p-value column (see `_p_owner`); the
    p-value that decides whether it is significant is the adjusted one when there is one.
    Order: the keys, then the primary metric's block (`lead`: rank, mean, n, difference,
    p-values), then every other column in the table's own order."""
    cols = list(df.columns)
    pos = {c: i for i, c in enumerate(cols)}
    pvals: dict[str, list[str]] = {}  # difference column -> its p-value columns, best first
    owner = {}
    for c in cols:
        o = _p_owner(c, pos)
        if o is not None:
            owner[c] = o
            pvals.setdefault(o, []).append(c)
    for ps in pvals.values():
        ps.sort(key=lambda c: next(i for i, s in enumerate(_P_SUFFIXES) if c.endswith(s)))
    folded: dict[str, dict[str, int]] = {}
    for c in cols:
        base, suf = _split(c)
        mean_base = base if suf == "_mean" else c
        extra = {"lo": f"{mean_base}_ci_low", "hi": f"{mean_base}_ci_high"}
        if suf == "_mean":
            extra["std"] = f"{base}_std"
        if c in owner:  # a note goes with the first p-value column of the table
            first = next(p for p in cols if owner.get(p) == owner[c])
            note = f"{_split(owner[c])[0]}_p_note"
            extra = {"note": "" if c != first else note if note in pos else
                     "p_note" if owner[c] == f"{primary}_diff" else ""}
        folded[c] = {k: pos[v] for k, v in extra.items() if v in pos and v != c}
    inner = {cols[i] for f in folded.values() for i in f.values()}
    view = []
    for c in cols:
        if c in inner or c == "is_baseline":
            continue
        base, suf = _split(c)
        spec: dict[str, Any] = {"c": pos[c], "label": c, **folded[c]}
        if c in keys:
            spec["kind"] = "key"
        elif suf == "_rank":
            spec.update(kind="rank", label="#" if base == primary else f"# {base}",
                        hidden=base != primary)
        elif c in owner:
            o = owner[c]
            tail = "p adj." if c.endswith("_p_adj") else "p"
            name = "" if o == f"{primary}_diff" else f" {o[:-5] if o.endswith('_diff') else o}"
            spec.update(kind="p", sig=bool(o) and pvals[o][0] == c, label=tail + name)
            if o:
                spec.update(d=pos[o], dir=_direction(o, directions))
        elif suf == "_diff" or c in pvals:
            spec.update(kind="diff", label=f"Δ {base}" if suf == "_diff" else c,
                        dir=_direction(base if suf == "_diff" else c, directions))
            if c in pvals:
                spec["p"] = pos[pvals[c][0]]
        elif pd.api.types.is_bool_dtype(df[c]) or not pd.api.types.is_numeric_dtype(df[c]):
            spec["kind"] = "text"
        else:
            spec["kind"] = "int" if pd.api.types.is_integer_dtype(df[c]) else "num"
            spec["label"] = base if suf == "_mean" else c
            spec["hidden"] = c.startswith("n_") and c[2:] in STATUSES  # counted in `flags`
            if base in directions:
                spec["dir"] = directions[base]
        rank = _LEAD.get(suf, 8) if base == primary else 3 if c == "n" else 8
        spec["lead"] = spec["kind"] != "key" and rank < 8
        view.append((0 if spec["kind"] == "key" else rank, spec))
    return [spec for _, spec in sorted(view, key=lambda r: r[0])]  # stable: board order within


def table_payload(tid: str, title: str, df: pd.DataFrame, keys: Sequence[str], primary: str,
                  directions: Mapping[str, str], cell_index: dict[tuple, list[int]],
                  cell_keys: Sequence[str]) -> dict:
    """One table for report.js: raw rows (one list per row, columns as in `cols`), how each
    column is shown (`view`), its key columns, the `is_baseline` column, and per row the
    indices of its cells (rows of the cells table whose `cell_keys` match, as text; None when
    the table lacks one of those keys, so its rows do not open)."""
    df = df.reset_index(drop=True)
    out = {"id": tid, "title": title, "cols": [str(c) for c in df.columns],
           "rows": [list(r) for r in zip(*(json_values(df[c]) for c in df.columns), strict=True)]
           if len(df.columns) else [],
           "view": view_columns(df, [k for k in keys if k in df], primary, directions),
           "keys": [k for k in keys if k in df],
           "baseline": list(df.columns).index("is_baseline") if "is_baseline" in df else None,
           "cells": None}
    if cell_keys and all(k in df for k in cell_keys):
        tuples = zip(*(df[k].astype(str) for k in cell_keys), strict=True)
        out["cells"] = [cell_index.get(t, []) for t in tuples]
    return out


def _thin(n: int, limit: int = CURVE_POINTS) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def _steps(x: list) -> list | dict:
    """Evenly spaced steps as {"s": first, "d": stride} (a third of a page's size at 10,000
    cells is curve steps otherwise); other steps as the list."""
    if len(x) >= 3 and all(b - a == x[1] - x[0] for a, b in zip(x[:-1], x[1:], strict=True)):
        return {"s": x[0], "d": x[1] - x[0]}
    return x


def _series(steps: np.ndarray, values: np.ndarray, sig: int = 4) -> list:
    i = _thin(len(steps))
    x = steps[i]
    return [_steps(x.astype(int).tolist() if (x == np.round(x)).all() else x.tolist()),
            round_sig(values[i], sig)]


def cell_curves(curves: pd.DataFrame, cell_ids: Sequence[str],
                 eval_metric: str) -> tuple[list[str], list]:
    """Per cell [[steps, values] per series] for train `reward_mean` and eval `eval_metric`
    (see `_steps` for how steps are written)."""
    names, per_cell = [], {cid: [] for cid in cell_ids}
    for kind, col in (("train", "reward_mean"), ("eval", eval_metric)):
        if not {"cell_id", "kind", "step", col} <= set(curves.columns):
            continue
        names.append(f"{kind} {col}")
        sub = curves.loc[curves["kind"] == kind, ["cell_id", "step", col]].dropna()
        sub = sub[sub["cell_id"].isin(per_cell)].sort_values(["cell_id", "step"], kind="stable")
        ids = sub["cell_id"].to_numpy()
        steps = sub["step"].to_numpy(float)
        steps = steps.astype(int).tolist() if (steps == np.round(steps)).all() else steps.tolist()
        vals = round_sig(sub[col].to_numpy(float), 3)  # once for all cells: ~100x faster
        cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        have = {}
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(ids)].tolist(), strict=True):
            if b > a:
                i = range(a, b) if b - a <= CURVE_POINTS else (a + _thin(b - a)).tolist()
                have[ids[a]] = [_steps([steps[j] for j in i]), [vals[j] for j in i]]
        for cid, s in per_cell.items():
            s.append(have.get(cid, [[], []]))
    return names, [per_cell[c] if names else None for c in cell_ids]


def group_curves(curves: pd.DataFrame, table: pd.DataFrame,
                 keys: Sequence[str]) -> tuple[list[str], list | None]:
    """Per table row [[steps, values] per series] from the mean-curve table (`curve_table`):
    one series per numeric `train_*` / `eval_*` column except the `_n` counts."""
    keys = [k for k in keys if k in curves.columns and k in table.columns]
    if curves.empty or not keys or "step" not in curves:
        return [], None
    names = [c for c in curves.columns if c.startswith(("train_", "eval_"))
             and not c.endswith("_n") and pd.api.types.is_numeric_dtype(curves[c])]
    steps = curves["step"].to_numpy(float)
    values = [curves[n].to_numpy(float) for n in names]
    found = {}
    for key, idx in curves.groupby(keys, sort=False, dropna=False).indices.items():
        idx = idx[np.argsort(steps[idx], kind="stable")]
        series = []
        for v in values:
            ok = idx[~np.isnan(v[idx])]
            series.append(_series(steps[ok], v[ok]))
        found[tuple(map(str, key if isinstance(key, tuple) else (key,)))] = series
    rows = zip(*(table[k].astype(str) for k in keys), strict=True)
    return names, [found.get(tuple(r)) for r in rows]


def split_configs(configs: list[dict | None]) -> tuple[dict, list[dict | None]]:
    """(keys equal in every cell's config, per cell the rest): the grid's swept keys."""
    have = [c for c in configs if c is not None]
    if not have:
        return {}, configs
    first = have[0]
    common = {k: v for k, v in first.items()
              if all(k in c and c[k] == v and type(c[k]) is type(v) for c in have)}
    return common, [None if c is None else {k: v for k, v in c.items() if k not in common}
                    for c in configs]


__all__ = ["CURVE_POINTS", "cell_curves", "group_curves", "group_keys", "json_values",
           "round_sig", "split_configs", "table_payload", "view_columns"]
