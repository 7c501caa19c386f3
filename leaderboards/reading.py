"""Read a results directory into DataFrames. The only code in `leaderboards` that reads files.

Layout (see docs/results.md): `<results_dir>/grid.json` (optional manifest) and one directory
per cell holding `result.json` and `metrics.jsonl`. Every file problem is collected as a
`Problem` with the file's path relative to `results_dir`, and announced in one warning; a bad
`result.json` is excluded, never averaged.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
RESULT_STATUSES = ("completed", "failed", "diverged", "timeout")
# Statuses the leaderboard adds: a manifest cell without result.json, or with a bad one.
INCOMPLETE, INVALID = "incomplete", "invalid"
STATUSES = RESULT_STATUSES + (INCOMPLETE, INVALID)
DIRECTIONS = ("max", "min", "none")
DEFAULT_PRIMARY = "accuracy"

# Per-cell columns of `Results.cells`; metric values follow as one column per metric name.
CELL_COLUMNS = ("task", "algorithm", "divergence", "seed", "base", "cell_id", "status",
                "reason", "diverged_step", "wall_time_s", "path")
# Metrics derived from stored ones when these are present: name -> (source, function).
DERIVED = {"sqrt_kl": ("kl_pi_pi0", lambda v: math.sqrt(max(v, 0.0)))}
_KEY_FIELDS = ("task", "algorithm", "divergence")
_IDENTITY = (*_KEY_FIELDS, "seed", "base")  # fields a result must share with grid.json
_RESERVED = frozenset(CELL_COLUMNS)


class LeaderboardWarning(UserWarning):
    """Issued once by `load` when files were excluded or only partly read."""


@dataclass(frozen=True)
class Problem:
    """A file that was excluded or only partly read. `path` is relative to the results dir."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Results:
    """Everything `load` found.

    cells: one row per cell (CELL_COLUMNS + one float column per metric). Manifest cells with
        no result.json have status `incomplete`; with an unreadable one, `invalid`.
    curves: one row per metrics.jsonl line, with `cell_id` added (columns as written).
    directions: metric name -> `max` | `min` | `none`.
    baseline: (algorithm, divergence) declared by the manifest, or None.
    primary_metric: the manifest's `primary_metric`, else `accuracy`.
    sweep_keys: config keys a grid swept (each also a column of `cells`, NaN where a cell does
        not sweep it), in sorted order.
    items: cell_id -> per-item outcomes of its final evaluation: {"accuracy": (n,) 0/1,
        "correct_of_k": (n,) correct samples out of "samples" K} (as present in result.json).
    """

    root: Path
    cells: pd.DataFrame
    curves: pd.DataFrame
    directions: dict[str, str]
    baseline: tuple[str, str] | None = None
    primary_metric: str = DEFAULT_PRIMARY
    grid_name: str | None = None
    problems: list[Problem] = field(default_factory=list)
    sweep_keys: list[str] = field(default_factory=list)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Bad(ValueError):
    """A required field is missing or malformed; the message says which and what was expected."""


def _str_field(d: dict, key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise _Bad(f"field {key!r} must be a non-empty string, got {v!r}")
    return v


def _seed_field(d: dict) -> int:
    v = d.get("seed")
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"field 'seed' must be an integer, got {v!r}")
    return v


def _base_field(d: dict) -> int:
    """The base model's pretraining seed: `base.seed`, else the config's pretrain.seed (results
    written before bases were recorded), else 0."""
    base = d.get("base")
    if isinstance(base, dict) and isinstance(base.get("seed"), int):
        return base["seed"]
    if isinstance(base, int) and not isinstance(base, bool):
        return base
    seed = ((d.get("config") or {}).get("pretrain") or {}).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def _items(d: dict) -> dict[str, Any] | None:
    """Per-item outcomes of the final evaluation, when stored and well formed."""
    items = d.get("items")
    if not isinstance(items, dict):
        return None
    out: dict[str, Any] = {}
    acc = items.get("accuracy")
    if isinstance(acc, str) and acc and set(acc) <= {"0", "1"}:
        out["accuracy"] = np.frombuffer(acc.encode(), dtype=np.uint8) - ord("0")
    counts = items.get("correct_of_k")
    K = (d.get("eval") or {}).get("samples")
    if isinstance(counts, list) and counts and isinstance(K, int) and K > 0:
        out["correct_of_k"] = np.asarray(counts, dtype=float)
        out["samples"] = K
    return out or None


def _number(v: Any, what: str) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"{what} must be a number or null, got {v!r}")
    return float(v)


def _parse_result(raw: bytes, dir_name: str) -> tuple[dict, dict[str, str], dict | None]:
    """Validate one result.json; return (row, {metric: direction}, per-item outcomes or None).
    Raises _Bad or ValueError."""
    d = json.loads(raw)
    if not isinstance(d, dict):
        raise _Bad("top level must be a JSON object")
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _Bad(f"schema_version is {version!r}; this leaderboard reads {SCHEMA_VERSION}")
    cell_id = _str_field(d, "cell_id")
    if cell_id != dir_name:
        raise _Bad(f"cell_id {cell_id!r} does not match its directory name {dir_name!r}")
    status = d.get("status")
    if status not in RESULT_STATUSES:
        raise _Bad(f"status {status!r} is not one of {', '.join(RESULT_STATUSES)}")
    row: dict[str, Any] = {k: _str_field(d, k) for k in _KEY_FIELDS}
    row["seed"] = _seed_field(d)
    row["base"] = _base_field(d)
    sweep = d.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise _Bad(f"'sweep' must be an object of {{config key: value}}, got {sweep!r}")
    for key, value in sweep.items():
        if key in _RESERVED:
            raise _Bad(f"swept key {key!r} clashes with a leaderboard column")
        row[key] = value
    row["cell_id"] = cell_id
    row["status"] = status
    reason = d.get("reason")
    row["reason"] = None if reason is None else str(reason)
    step = d.get("diverged_step")
    row["diverged_step"] = _number(step, "diverged_step")
    row["wall_time_s"] = _number(d.get("wall_time_s"), "wall_time_s")
    metrics = d.get("metrics")
    if metrics is None and status != "completed":
        metrics = {}
    if not isinstance(metrics, dict):
        raise _Bad(f"'metrics' must be an object of {{name: {{value, direction}}}}, "
                   f"got {type(metrics).__name__}")
    directions: dict[str, str] = {}
    for name, m in metrics.items():
        if name in _RESERVED:
            raise _Bad(f"metric name {name!r} clashes with a leaderboard column; rename it")
        try:
            value, direction = m["value"], m["direction"]
        except (TypeError, KeyError):
            raise _Bad(f"metric {name!r} must be an object with 'value' and 'direction'") from None
        if direction not in DIRECTIONS:
            raise _Bad(f"metric {name!r} direction {direction!r} is not one of max, min, none")
        row[name] = value if type(value) is float else _number(value, f"metric {name!r} value")
        directions[name] = direction
    for name, (source, fn) in DERIVED.items():
        if source in metrics and not math.isnan(row[source]):
            row[name] = fn(row[source])
            directions[name] = "none"
    return row, directions, _items(d)


def _parse_jsonl(raw: bytes) -> tuple[list[dict], list[int], int]:
    """(rows, 1-based numbers of lines that are not JSON objects, number of the last line)."""
    try:  # fast path, one parse per file; blank or broken lines fail it and go line by line
        rows = json.loads(b"[" + raw.strip().replace(b"\n", b",") + b"]")
        if all(type(r) is dict for r in rows):
            return rows, [], len(rows)
    except ValueError:
        pass
    rows, bad, last = [], [], 0
    for i, ln in enumerate(raw.splitlines(), 1):
        if not ln.strip():
            continue
        last = i
        try:
            r = json.loads(ln)
        except ValueError:
            bad.append(i)
            continue
        if isinstance(r, dict):
            rows.append(r)
        else:
            bad.append(i)
    return rows, bad, last


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _load_manifest(root: Path, problems: list[Problem]) -> dict | None:
    raw = _read(os.path.join(root, "grid.json"))
    if raw is None:
        return None
    try:
        m = json.loads(raw)
        if not isinstance(m, dict):
            raise _Bad("top level must be a JSON object")
        cells = m.get("cells")
        if not isinstance(cells, list):
            raise _Bad("'cells' must be a list")
        by_id = {}
        for i, c in enumerate(cells):
            if not isinstance(c, dict):
                raise _Bad(f"cells[{i}] must be an object")
            try:
                entry = {**{k: _str_field(c, k) for k in _KEY_FIELDS}, "seed": _seed_field(c)}
                if "base" in c:
                    entry["base"] = _base_field(c)
                sweep = c.get("sweep") or {}
                if not isinstance(sweep, dict):
                    raise _Bad(f"'sweep' must be an object, got {sweep!r}")
                by_id[_str_field(c, "cell_id")] = {**entry, **sweep}
            except _Bad as e:
                raise _Bad(f"cells[{i}]: {e}") from None
        baseline = m.get("baseline")
        if baseline is not None:
            if not isinstance(baseline, dict):
                raise _Bad("'baseline' must be {algorithm, divergence} or null")
            baseline = (_str_field(baseline, "algorithm"), _str_field(baseline, "divergence"))
        primary = m.get("primary_metric", DEFAULT_PRIMARY)
        if not isinstance(primary, str) or not primary:
            raise _Bad(f"'primary_metric' must be a metric name, got {primary!r}")
        name = m.get("name")
        return {"cells": by_id, "baseline": baseline, "primary_metric": primary,
                "name": name if isinstance(name, str) else None}
    except ValueError as e:  # _Bad and json.JSONDecodeError
        problems.append(Problem("grid.json", f"manifest ignored: {e}"))
        return None


def load(results_dir: str | os.PathLike) -> Results:
    """Read `grid.json`, every `*/result.json` and every `*/metrics.jsonl` under results_dir.

    A result.json that does not parse, has another schema_version, or lacks a required field
    (task, algorithm, divergence, seed, cell_id matching its directory, status, well-formed
    metrics) is excluded and listed in `problems`. With a manifest, results for cells it does
    not list (a stale config) are excluded too, and its cells without a result are `incomplete`.
    Raises FileNotFoundError if results_dir is not a directory, ValueError if it holds no
    cells at all (neither a readable manifest nor any valid result.json).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results directory {str(root)!r} does not exist or is not a "
                                "directory; pass the folder that holds the cell directories")
    problems: list[Problem] = []
    manifest = _load_manifest(root, problems)
    expected = manifest["cells"] if manifest else None

    rows: dict[str, dict] = {}
    items: dict[str, dict[str, Any]] = {}
    directions: dict[str, str] = {}
    conflicts: set[str] = set()
    cell_dirs: list[str] = []
    with os.scandir(root) as it:
        entries = sorted((e.name, e.path) for e in it if e.is_dir() and not e.name.startswith("."))
    for name, path in entries:
        rel = f"{name}/result.json"
        raw = _read(f"{path}/result.json")
        if raw is None:
            if expected is not None and name in expected:
                cell_dirs.append(name)
            continue
        try:
            row, dirs, cell_items = _parse_result(raw, name)
            if expected is not None:
                if name not in expected:
                    raise _Bad("cell is not in grid.json (left over from an older grid config?)")
                want = {k: v for k, v in expected[name].items() if k in _IDENTITY}
                got = {k: row[k] for k in want}
                if got != want:
                    raise _Bad(f"fields {got} disagree with grid.json {want}")
        except ValueError as e:  # _Bad, json.JSONDecodeError and UnicodeDecodeError
            if not isinstance(e, _Bad):
                e = _Bad(f"not valid JSON, truncated or corrupt ({e})")
            problems.append(Problem(rel, f"excluded: {e}"))
            if expected is not None and name in expected:
                rows[name] = {**expected[name], "cell_id": name, "status": INVALID,
                              "reason": str(e), "path": rel}
                cell_dirs.append(name)
            continue
        for m, dr in dirs.items():
            if directions.setdefault(m, dr) != dr:
                conflicts.add(m)
        row["path"] = rel
        rows[name] = row
        if cell_items is not None:
            items[name] = cell_items
        cell_dirs.append(name)
    for m in sorted(conflicts):
        problems.append(Problem("*/result.json", f"metric {m!r} has conflicting directions; "
                                f"using {directions[m]!r} (first seen)"))
    if expected is not None:
        for cid, fields in expected.items():
            if cid not in rows:
                rows[cid] = {**fields, "cell_id": cid, "status": INCOMPLETE,
                             "reason": "no result.json", "path": f"{cid}/result.json"}

    curve_rows: list[dict] = []
    curve_ids: list[str] = []
    for name in cell_dirs:
        raw = _read(f"{root}/{name}/metrics.jsonl")
        if raw is None:
            continue
        recs, bad, last = _parse_jsonl(raw)
        if bad == [last] and rows[name]["status"] != "completed":
            bad = []  # half a last line: the process was killed mid-write, as its status says
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
            problems.append(Problem(f"{name}/metrics.jsonl",
                                    f"{len(bad)} unreadable line(s) skipped (line {shown})"))
        curve_rows.extend(recs)
        curve_ids.extend([name] * len(recs))

    if not rows:
        found = "; ".join(map(str, problems[:5])) or "nothing"
        found += f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError(f"no cells under {str(root)!r}: expected grid.json or "
                         f"<cell>/result.json (found: {found}). Pass a grid's results folder, "
                         "e.g. results/tiny")
    cells = pd.DataFrame(list(rows.values()))
    sweep_keys = sorted(set(cells.columns) - set(CELL_COLUMNS) - set(directions))
    cells = cells.reindex(columns=list(CELL_COLUMNS) + sweep_keys + sorted(directions))
    for m in directions:
        cells[m] = cells[m].astype(float)
    cells["seed"] = cells["seed"].astype("Int64")
    cells["base"] = cells["base"].fillna(0).astype("Int64")
    cells = cells.sort_values(["task", "algorithm", "divergence", "base", "seed", "cell_id"],
                              ignore_index=True)
    curves = pd.DataFrame(curve_rows).drop(columns="cell_id", errors="ignore")
    curves.insert(0, "cell_id", curve_ids)
    for col in ("kind", "step"):
        if col not in curves:
            curves[col] = pd.Series(dtype=object if col == "kind" else float)

    if problems:
        listed = "\n  ".join(map(str, problems[:20]))
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        warnings.warn(f"{len(problems)} file problem(s) under {root}:\n  {listed}{more}",
                      LeaderboardWarning, stacklevel=2)
    return Results(
        root=root, cells=cells, curves=curves, directions=directions,
        baseline=manifest["baseline"] if manifest else None,
        primary_metric=manifest["primary_metric"] if manifest else DEFAULT_PRIMARY,
        grid_name=manifest["name"] if manifest else None, problems=problems,
        sweep_keys=sweep_keys, items=items)
