"""Grid files: a checked-in TOML that names every cell of an ablation, and its pure expansion.

Format (version 1)::

    version = 1                       # required; the only version this code reads
    name = "tiny"                     # optional; defaults to the file name; names results/<name>/
    description = "..."               # optional, free text
    primary_metric = "accuracy"       # optional; the metric leaderboards rank by

    [base]                            # a RunConfig table applied to every cell
    run.steps = 40                    # (sections run, model, pretrain, task, algorithm,
    rollout.prompts_per_step = 8      #  divergence, reference, rollout, optim, eval)

    [axes]                            # tasks, algorithms, divergences, seeds required
    tasks = ["arith"]
    algorithms = ["dr_grpo", "grpo"]
    divergences = ["none", "kl_k3"]   # or "all", or {all = true, except = ["neural_mirror_es"]}:
                                      #   every registered entry, so a new one joins by itself
    seeds = [0, 1, 2]                 # RL seeds (run.seed)
    bases = [0, 1, 2]                 # optional: base models, by pretraining seed (pretrain.seed)

    [baseline]                        # required; the cell the leaderboard compares against
    algorithm = "dr_grpo"
    divergence = "none"

    [overrides.divergence.kl_k3]      # a RunConfig table for cells with that axis value;
    divergence.beta = 0.04            # axis keys: task, algorithm, divergence, seed, base

    [sweep.all]                       # any config key as an axis, for every cell
    "optim.lr" = [1e-5, 5e-5]
    [sweep.divergence.kl_k3]          # ... or only for cells with one axis value (task,
    "divergence.beta" = [0.01, 0.1, 1.0]   # algorithm or divergence): beta ranges differ by
                                      # orders of magnitude between divergences

    [[exclude]]                       # drop cells matching *all* the given axis values: a
    algorithm = "grpo"                # value, a list of values, or {not = [...]} (every value
    divergence = {not = ["none"]}     # of the axis but those)

    [resources]                       # per cell; executors schedule by these
    num_cpus = 1
    num_gpus = 0
    timeout_s = 3600

A cell's config is built in this order, later winning:
defaults <- [base] <- task override <- algorithm override <- divergence override <- base
override <- seed override <- the cell's swept values <- the axis values themselves (task.name,
algorithm.name, divergence.name, pretrain.seed, run.seed). Neither [base], an override nor a
sweep may set those keys: the axes own them. A cell sweeps the keys of [sweep.all] and of the
[sweep.<axis>.<value>] tables of its own axis values (a later table wins for a key it shares),
over the product of their values, in file order.

Its id is ``task__algorithm__divergence[__key=value...]__b<base>__s<seed>__<config hash>``,
where the swept keys are named by their last component (the full path where two would
collide), so a finished cell is recognised on re-run and a changed config becomes a new cell.

Everything is checked before any training starts: unknown keys, axis values unknown to the
registries (through :func:`gbmpo.config.from_dict`), duplicate axis values, override and sweep
keys, exclusions and a baseline naming values not in the grid. Errors are :class:`GridError`.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbmpo.config import ConfigError, RunConfig, from_dict, read_toml, set_path

SCHEMA_VERSION = 1

# axis table key -> the singular name used in overrides, exclusions, baseline and cell fields
AXES = {"tasks": "task", "algorithms": "algorithm", "divergences": "divergence", "seeds": "seed",
        "bases": "base"}
AXIS_KEYS = tuple(AXES.values())
OPTIONAL_AXES = ("bases",)
# axes whose values are registry names and may be given as "all" (every registered entry)
REGISTRY_AXES = {"tasks": "TASKS", "algorithms": "ALGORITHMS", "divergences": "DIVERGENCES"}
SWEEP_AXES = ("task", "algorithm", "divergence")  # [sweep.<axis>.<value>] tables
# the config key each axis sets; [base], overrides and sweeps may not touch these
AXIS_CONFIG_PATHS = {"task": ("task", "name"), "algorithm": ("algorithm", "name"),
                     "divergence": ("divergence", "name"), "seed": ("run", "seed"),
                     "base": ("pretrain", "seed")}
TOP_LEVEL = ("version", "name", "description", "primary_metric", "base", "axes", "baseline",
             "overrides", "sweep", "exclude", "resources")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class GridError(ConfigError):
    """A grid file problem; the message names the file, the key and what is accepted."""


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    timeout_s: float = 3600.0


@dataclass(frozen=True)
class Cell:
    cell_id: str
    task: str
    algorithm: str
    divergence: str
    seed: int
    config: RunConfig
    base: int = 0  # the base model's pretraining seed
    sweep: tuple[tuple[str, Any], ...] = ()  # (config path, value) of every swept key

    def axis_values(self) -> dict[str, Any]:
        return {"task": self.task, "algorithm": self.algorithm,
                "divergence": self.divergence, "seed": self.seed, "base": self.base}

    def sweep_values(self) -> dict[str, Any]:
        return dict(self.sweep)


@dataclass(frozen=True)
class Grid:
    name: str
    version: int
    axes: dict[str, list]  # singular axis name -> values, in file order
    baseline: dict[str, str]
    base: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, dict[str, dict]] = field(default_factory=dict)  # axis -> value -> table
    sweep: dict[str, dict[str, dict[str, list]]] = field(default_factory=dict)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    description: str = ""
    primary_metric: str = "accuracy"
    source: str = "<grid>"


# ---- parsing -------------------------------------------------------------------------------
def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (structure only; :func:`expand` checks every cell config)."""
    p = Path(path)
    data = read_toml(p, "grid", GridError)
    return parse_grid(data, default_name=p.stem, source=str(p))


def _unknown(what: str, name: str, valid: Any) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Valid: {', '.join(valid)}"


def parse_grid(data: dict[str, Any], *, default_name: str = "grid",
               source: str = "<grid>") -> Grid:
    """Plain TOML data -> Grid, with every structural problem reported as GridError."""

    def fail(msg: str) -> GridError:
        return GridError(f"{source}: {msg}")

    for key in data:
        if key not in TOP_LEVEL:
            raise fail(_unknown("top-level key", key, TOP_LEVEL))
    if "version" not in data:
        raise fail(f"missing 'version' (add `version = {SCHEMA_VERSION}` at the top)")
    if data["version"] != SCHEMA_VERSION or isinstance(data["version"], bool):
        raise fail(f"version {data['version']!r} is not supported; this code reads "
                   f"version = {SCHEMA_VERSION}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise fail(f"name {name!r} must be a non-empty string of letters, digits, '_', '.', "
                   "'-' (it becomes a directory name)")
    for key in ("description", "primary_metric"):
        if key in data and not isinstance(data[key], str):
            raise fail(f"{key} must be a string, got {data[key]!r}")

    base = _table(data.get("base", {}), "[base]", fail)
    axes = _parse_axes(data.get("axes"), base, fail)
    _check_config_table(base, "[base]", fail)
    baseline = _parse_baseline(data.get("baseline"), axes, fail)
    overrides = _parse_overrides(data.get("overrides", {}), axes, fail)
    sweep = _parse_sweep(data.get("sweep", {}), axes, fail)
    exclude = _parse_exclude(data.get("exclude", []), axes, fail)
    resources = _parse_resources(data.get("resources", {}), fail)
    return Grid(name=name, version=SCHEMA_VERSION, axes=axes, baseline=baseline, base=base,
                overrides=overrides, sweep=sweep, exclude=exclude, resources=resources,
                description=data.get("description", ""),
                primary_metric=data.get("primary_metric", "accuracy"), source=source)


def _table(value: Any, where: str, fail: Any) -> dict:
    if not isinstance(value, dict):
        raise fail(f"{where} must be a table, got {value!r}")
    return value


def _check_config_table(table: dict, where: str, fail: Any) -> None:
    """Keys and types against RunConfig (plugin names are checked per cell in `expand`)."""
    for axis, (sec, key) in AXIS_CONFIG_PATHS.items():
        section = table.get(sec)
        if isinstance(section, dict) and key in section:
            raise fail(f"{where} sets {sec}.{key}, which the {axis} axis owns; "
                       f"list the value in [axes] {axis}s instead")
    try:
        from_dict(table, validate=False)
    except ConfigError as e:
        raise fail(f"{where}: {e}") from None


def _registry_names(plural: str, fail: Any) -> list[str]:
    """Every registered name; a plugin file that failed to load stops the expansion (an "all"
    axis must not silently leave an entry out)."""
    import importlib

    from gbmpo.registry import RegistryError

    module = {"tasks": "gbmpo.tasks", "algorithms": "gbmpo.algorithms",
              "divergences": "gbmpo.divergences"}[plural]
    registry = getattr(importlib.import_module(module), REGISTRY_AXES[plural])
    try:
        registry.check()
    except RegistryError as e:
        raise fail(f"axes.{plural} = all: {e}") from None
    return registry.names()


def _every_registered(plural: str, value: Any, fail: Any) -> list[str]:
    """`"all"` or `{all = true, except = [...]}` -> every registered name, sorted, minus the
    exceptions (which must be registered names, so a typo fails loudly)."""
    if value == "all":
        value = {"all": True}
    extra = set(value) - {"all", "except"}
    if extra or value.get("all") is not True:
        raise fail(f"axes.{plural} as a table must be {{all = true, except = [...]}}, got "
                   f"{value!r}")
    names = _registry_names(plural, fail)
    skip = value.get("except", [])
    if not isinstance(skip, list) or not all(isinstance(x, str) for x in skip):
        raise fail(f"axes.{plural}.except must be a list of names, got {skip!r}")
    for x in skip:
        if x not in names:
            raise fail(_unknown(f"name in axes.{plural}.except", x, names))
    return [n for n in names if n not in skip]


def _parse_axes(value: Any, base: dict, fail: Any) -> dict[str, list]:
    if value is None:
        raise fail("missing [axes] table (tasks, algorithms, divergences, seeds)")
    value = dict(_table(value, "[axes]", fail))
    for key in value:
        if key not in AXES:
            raise fail(_unknown("axis", key, list(AXES)))
    if "bases" not in value:  # one base: the recipe's own pretraining seed
        value["bases"] = [base.get("pretrain", {}).get("seed", 0)]
        if isinstance(base.get("pretrain"), dict):
            base["pretrain"] = {k: v for k, v in base["pretrain"].items() if k != "seed"}
    axes: dict[str, list] = {}
    for plural, singular in AXES.items():
        values = value.get(plural)
        if plural in REGISTRY_AXES and (values == "all" or isinstance(values, dict)):
            values = _every_registered(plural, values, fail)
        if not isinstance(values, list) or not values:
            raise fail(f"axes.{plural} must be a non-empty list, got {values!r}")
        for v in values:
            ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 0
                  if singular in ("seed", "base")
                  else isinstance(v, str) and NAME_RE.match(v) is not None)
            if not ok:
                want = ("non-negative integers" if singular in ("seed", "base")
                        else "names (strings)")
                raise fail(f"axes.{plural} must hold {want}, got {v!r}")
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise fail(f"axes.{plural} lists {', '.join(dupes)} more than once")
        axes[singular] = list(values)
    return axes


def _axis_value(axes: dict[str, list], axis: str, value: Any, where: str, fail: Any) -> Any:
    """Check that `value` (TOML key strings allowed for seeds) is on `axis`; return it typed."""
    if axis not in axes:
        raise fail(_unknown(f"axis in {where}", axis, AXIS_KEYS))
    if axis in ("seed", "base") and isinstance(value, str) and value.isdigit():
        value = int(value)
    if value not in axes[axis] or isinstance(value, bool):
        shown = ", ".join(str(v) for v in axes[axis])
        raise fail(f"{where}: {axis} {value!r} is not in the grid (axes.{axis}s: {shown})")
    return value


def _parse_baseline(value: Any, axes: dict[str, list], fail: Any) -> dict[str, str]:
    if value is None:
        raise fail("missing [baseline] table (algorithm = ..., divergence = ...)")
    value = _table(value, "[baseline]", fail)
    for key in value:
        if key not in ("algorithm", "divergence"):
            raise fail(_unknown("key in [baseline]", key, ("algorithm", "divergence")))
    out = {}
    for key in ("algorithm", "divergence"):
        if key not in value:
            raise fail(f"[baseline] needs {key} = ...")
        out[key] = _axis_value(axes, key, value[key], "[baseline]", fail)
    return out


def _parse_overrides(value: Any, axes: dict[str, list], fail: Any) -> dict[str, dict[str, dict]]:
    value = _table(value, "[overrides]", fail)
    out: dict[str, dict[str, dict]] = {}
    for axis, per_value in value.items():
        if axis not in AXIS_KEYS:
            raise fail(_unknown("axis in [overrides]", axis, AXIS_KEYS))
        per_value = _table(per_value, f"[overrides.{axis}]", fail)
        for v, table in per_value.items():
            where = f"[overrides.{axis}.{v}]"
            _axis_value(axes, axis, v, where, fail)
            table = _table(table, where, fail)
            _check_config_table(table, where, fail)
            out.setdefault(axis, {})[str(v)] = table
    return out


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """{"divergence": {"beta": [..]}} -> {"divergence.beta": [..]}: dotted TOML keys and quoted
    "a.b" keys name the same config path."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def _parse_sweep_table(table: Any, where: str, fail: Any) -> dict[str, list]:
    table = _table(table, where, fail)
    out = {}
    owned = {".".join(p) for p in AXIS_CONFIG_PATHS.values()}
    for path, values in _flatten(table).items():
        if path in owned:
            axis = next(a for a, p in AXIS_CONFIG_PATHS.items() if ".".join(p) == path)
            raise fail(f"{where} sweeps {path}, which the {axis} axis owns; list the values in "
                       f"[axes] {axis}s instead")
        if not isinstance(values, list) or not values:
            raise fail(f"{where}: {path} must be a non-empty list of values to sweep, got "
                       f"{values!r}")
        if any(values.count(v) > 1 for v in values):
            raise fail(f"{where}: {path} lists a value more than once: {values!r}")
        for v in values:  # each value must be valid for the key (type, known key)
            data: dict[str, Any] = {}
            set_path(data, path.split("."), v)
            try:
                from_dict(data, validate=False)
            except ConfigError as e:
                raise fail(f"{where}: {e}") from None
        out[path] = list(values)
    return out


def _parse_sweep(value: Any, axes: dict[str, list], fail: Any) -> dict[str, dict[str, dict]]:
    """{"all": {"": {path: values}}, "<axis>": {"<value>": {path: values}}}."""
    value = _table(value, "[sweep]", fail)
    out: dict[str, dict[str, dict]] = {}
    for key, table in value.items():
        if key == "all":
            out["all"] = {"": _parse_sweep_table(table, "[sweep.all]", fail)}
            continue
        if key not in SWEEP_AXES:
            raise fail(_unknown("key in [sweep] (all, or an axis: task, algorithm, divergence)",
                                key, ("all", *SWEEP_AXES)))
        for v, sub in _table(table, f"[sweep.{key}]", fail).items():
            where = f"[sweep.{key}.{v}]"
            _axis_value(axes, key, v, where, fail)
            out.setdefault(key, {})[str(v)] = _parse_sweep_table(sub, where, fail)
    return out


def _parse_exclude(value: Any, axes: dict[str, list], fail: Any) -> list[dict[str, Any]]:
    """Each rule maps axis -> a set of values it matches: one value, a list of values, or
    {not = [...]} (every value of the axis but those, e.g. every divergence but `none`, which
    keeps a rule valid when new entries are registered)."""
    if not isinstance(value, list):
        raise fail("exclude must be an array of tables ([[exclude]] ...)")
    out = []
    for i, rule in enumerate(value):
        where = f"[[exclude]] #{i + 1}"
        rule = _table(rule, where, fail)
        if not rule:
            raise fail(f"{where} is empty; it would drop every cell")
        parsed = {}
        for k, v in rule.items():
            if isinstance(v, dict):
                if set(v) != {"not"} or not isinstance(v["not"], list):
                    raise fail(f"{where}: {k} as a table must be {{not = [...]}}, got {v!r}")
                keep = {_axis_value(axes, k, x, where, fail) for x in v["not"]}
                parsed[k] = [x for x in axes[k] if x not in keep]
            else:
                parsed[k] = [_axis_value(axes, k, x, where, fail)
                             for x in (v if isinstance(v, list) else [v])]
        out.append(parsed)
    return out


def _parse_resources(value: Any, fail: Any) -> Resources:
    value = _table(value, "[resources]", fail)
    fields = {"num_cpus": 0.0, "num_gpus": 0.0, "timeout_s": 1e-9}  # name -> minimum
    for key, v in value.items():
        if key not in fields:
            raise fail(_unknown("key in [resources]", key, list(fields)))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < fields[key]:
            raise fail(f"resources.{key} must be a number >= {fields[key]:g}, got {v!r}")
    return Resources(**{k: float(v) for k, v in value.items()})


# ---- expansion -----------------------------------------------------------------------------
def merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `src` into a copy of `dst` (tables merge key by key; other values replace)."""
    out = copy.deepcopy(dst)
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


OVERRIDE_ORDER = ("task", "algorithm", "divergence", "base", "seed")


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, ".6g")
    if isinstance(v, (list, tuple)):
        return "-".join(format_value(x) for x in v)
    return str(v)


def sweep_label(sweep: tuple[tuple[str, Any], ...] | dict[str, Any]) -> str:
    """`beta=0.1__lr=5e-05`: each swept key by its last component (the full path where two
    would collide) and its value, characters outside [A-Za-z0-9_.+-] replaced by '-'."""
    items = list(dict(sweep).items())
    last = [p.rsplit(".", 1)[-1] for p, _ in items]
    parts = []
    for (path, v), short in zip(items, last, strict=True):
        name = short if last.count(short) == 1 else path
        parts.append("=".join(re.sub(r"[^A-Za-z0-9_.+-]", "-", x) for x in (name, format_value(v))))
    return "__".join(parts)


def cell_id(task: str, algorithm: str, divergence: str, seed: int, config: RunConfig,
            base: int | None = None, sweep: tuple[tuple[str, Any], ...] = ()) -> str:
    base = config.pretrain.seed if base is None else base
    label = sweep_label(sweep)
    mid = f"{label}__" if label else ""
    return f"{task}__{algorithm}__{divergence}__{mid}b{base}__s{seed}__{config.hash()}"


def cell_sweep(grid: Grid, point: dict[str, Any]) -> dict[str, list]:
    """The keys this cell sweeps, with their values: [sweep.all], then the tables of its task,
    algorithm and divergence (a later table wins for a key it shares)."""
    keys: dict[str, list] = dict(grid.sweep.get("all", {}).get("", {}))
    for axis in SWEEP_AXES:
        keys.update(grid.sweep.get(axis, {}).get(str(point[axis]), {}))
    return keys


def expand(grid: Grid) -> list[Cell]:
    """Grid -> cells in file order (tasks, then algorithms, divergences, swept values, bases,
    seeds), exclusions removed. Pure: the same grid always gives the same cells and ids. Every
    cell config is validated (registries included); the first bad one raises GridError naming
    the cell."""
    cells = []
    for task in grid.axes["task"]:
        for algorithm in grid.axes["algorithm"]:
            for divergence in grid.axes["divergence"]:
                head = {"task": task, "algorithm": algorithm, "divergence": divergence}
                swept = cell_sweep(grid, head)
                for combo in itertools.product(*swept.values()):
                    sweep = tuple(zip(swept, combo, strict=True))
                    for base in grid.axes["base"]:
                        for seed in grid.axes["seed"]:
                            point = {**head, "base": base, "seed": seed}
                            if any(all(point[k] in v for k, v in rule.items())
                                   for rule in grid.exclude):
                                continue
                            cells.append(_make_cell(grid, point, sweep))
    if not cells:
        raise GridError(f"{grid.source}: every cell is excluded; the grid is empty")
    base = grid.baseline
    if not any(c.algorithm == base["algorithm"] and c.divergence == base["divergence"]
               for c in cells):
        raise GridError(f"{grid.source}: baseline {base['algorithm']}:{base['divergence']} is "
                        "excluded from the grid; keep at least one of its cells")
    return cells


def _make_cell(grid: Grid, point: dict[str, Any], sweep: tuple = ()) -> Cell:
    data = grid.base
    for axis in OVERRIDE_ORDER:
        data = merge(data, grid.overrides.get(axis, {}).get(str(point[axis]), {}))
    for path, value in sweep:
        table: dict[str, Any] = {}
        set_path(table, path.split("."), value)
        data = merge(data, table)
    for axis, (sec, key) in AXIS_CONFIG_PATHS.items():
        data = merge(data, {sec: {key: point[axis]}})
    label = sweep_label(sweep)
    where = (f"{point['task']}/{point['algorithm']}/{point['divergence']}"
             f"{'/' + label if label else ''}/base {point['base']}/seed {point['seed']}")
    try:
        config = from_dict(data)
    except ConfigError as e:
        raise GridError(f"{grid.source}: cell {where}: {e}") from None
    return Cell(cell_id(point["task"], point["algorithm"], point["divergence"], point["seed"],
                        config, point["base"], sweep), point["task"], point["algorithm"],
                point["divergence"], point["seed"], config, point["base"], sweep)


def manifest(grid: Grid, cells: list[Cell]) -> dict[str, Any]:
    """The `grid.json` content (docs/results.md) for these cells."""
    return {"schema_version": SCHEMA_VERSION, "name": grid.name, "description": grid.description,
            "baseline": dict(grid.baseline), "primary_metric": grid.primary_metric,
            "sweep_keys": sorted({k for c in cells for k, _ in c.sweep}),
            "cells": [{"cell_id": c.cell_id, **c.axis_values(), "sweep": c.sweep_values()}
                      for c in cells]}
