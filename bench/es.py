"""`gbmpo-bench es`: search neural-mirror-map parameters with GBMPO's ES or Optuna's CMA-ES.

Each search is one Optuna study (maximize validation accuracy, `gbmpo.search`). Every
candidate is an ordinary cell: a training run with divergence `neural_mirror`,
`divergence.params.params` = the candidate's parameters, `eval.split = "validation"`,
run by the grid executors (local processes or Ray) under SEARCH_DIR/cells/<key>__<cell id>/,
with its parameters in SEARCH_DIR/candidates/<key>-<digest>.json. Cells are named by candidate
(key: slot for gbmpo-es, trial number for cmaes; digest: of the parameter values), so a cell
that finished before a kill is read back, not retrained. A failed or diverged candidate scores
0 and keeps its reason in the trial.

Outputs in SEARCH_DIR: best_params.json (the artifact: `save_params` format, provenance with
study, storage, strategy, generation and fitness history; load it with divergence
`neural_mirror_es`), fitness_history.csv, convergence.png, study.journal (default storage).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from gbmpo.search import ARTIFACT_KIND
from gbmpo.search.driver import Candidate, Evaluator, Fitness, Report, Search
from gbmpo.search.strategies import EsSettings
from gbmpo.search.study import SearchError, SearchSpec, open_storage, open_study, redact

ARTIFACT_NAME = "best_params.json"


# ---- candidates as cells -------------------------------------------------------------------
OWNED_KEYS = {"task.name": "--task", "algorithm.name": "--algorithm", "run.steps": "--steps",
              "run.seed": "--seed", "divergence.name": "the search (neural_mirror)",
              "divergence.params": "the search (the candidate's parameters)",
              "eval.split": "the search (validation)"}


def cell_base(task: str, algorithm: str, steps: int, seed: int, overrides: list[str]):
    """The RunConfig every candidate shares (params_path empty); --set may not touch the keys
    the search owns."""
    from gbmpo import config as C

    for text in overrides:
        keys, _ = C.parse_override(text)
        dotted = ".".join(keys)
        for owned, by in OWNED_KEYS.items():
            if dotted == owned or dotted.startswith(owned + "."):
                raise SearchError(f"--set {text}: {owned} is set by {by}")
    data = C.apply_overrides({}, overrides)
    # fitness is greedy validation accuracy: the sampled yardstick is off unless asked for
    data.setdefault("eval", {}).setdefault("samples", 0)
    forced = {"task": {"name": task}, "algorithm": {"name": algorithm},
              "divergence": {"name": "neural_mirror", "params": {}},
              "eval": {"split": "validation"}, "run": {"steps": steps, "seed": seed}}
    for sec, vals in forced.items():
        for k, v in vals.items():
            C.set_path(data, [sec, k], v)
    return C.from_dict(data)


def check_splits(cfg) -> dict[str, int]:
    """Validation examples must occur in neither train nor test: the search is fitted on them."""
    from gbmpo.tasks import TASKS

    task = TASKS.get(cfg.task.name)(**cfg.task.params)
    try:
        if "validation" not in task.splits:
            raise SearchError(f"task {cfg.task.name!r} has no validation split (splits: "
                              f"{', '.join(task.splits)}); the search needs one to score on")
        ids = {s: {e.id for e in task.split(s)} for s in ("train", "validation", "test")
               if s in task.splits}
    finally:
        task.close()
    for other in ("train", "test"):
        both = ids["validation"] & ids.get(other, set())
        if both:
            raise SearchError(f"task {cfg.task.name!r}: {len(both)} validation examples also "
                              f"occur in {other} (e.g. {sorted(both)[:3]}); a search scored on "
                              "them would leak; fix the task's splits first")
    return {s: len(v) for s, v in ids.items()}


def fitness_from_result(result: dict) -> Fitness:
    attrs = {"cell_id": result.get("cell_id"), "cell_status": result.get("status")}
    split = (result.get("eval") or {}).get("split")
    if result["status"] == "completed":
        if split != "validation":
            raise SearchError(f"cell {result.get('cell_id')} was scored on {split!r}, "
                              "not on validation")
        value = (result.get("metrics", {}).get("accuracy") or {}).get("value")
        if isinstance(value, (int, float)) and math.isfinite(value):
            return Fitness(float(value), attrs=attrs)
        return Fitness(0.0, True, "completed without a finite accuracy", attrs=attrs)
    return Fitness(0.0, True, f"{result['status']}: {result.get('reason') or 'no reason given'}",
                   attrs=attrs)


class CellEvaluator:
    """Candidates as cells under SEARCH_DIR/cells, run by a grid executor. With several
    `seeds`, a candidate is trained once per RL seed (the same seeds for every candidate, so
    comparisons between candidates are paired) and its fitness is the mean over seeds, a failed
    seed counting 0; the per-seed values are kept (`seed_fitness`) to measure fitness noise."""

    def __init__(self, search_dir: Path, base, executor, resources, study_name: str,
                 seeds: list[int] | None = None) -> None:
        from bench.grid import Grid

        self.dir, self.base, self.executor, self.resources = search_dir, base, executor, resources
        self.study_name = study_name
        self.seeds = seeds or [base.run.seed]
        self.grid = Grid(name=study_name, version=1, axes={
            "task": [base.task.name], "algorithm": [base.algorithm.name],
            "divergence": ["neural_mirror"], "seed": [base.run.seed],
            "base": [base.pretrain.seed]},
            baseline={"algorithm": base.algorithm.name, "divergence": "neural_mirror"})
        self._prepared = False

    def params_path(self, cand: Candidate) -> Path:
        """candidates/<key>-<digest of the parameters>.json: the cell id follows the content, so
        a cell of another study in the same directory is never taken for this candidate's."""
        digest = hashlib.sha256(np.asarray(cand.params, np.float64).tobytes()).hexdigest()[:8]
        return (self.dir / "candidates" / f"{cand.key}-{digest}.json").resolve()

    def cell(self, cand: Candidate, seed: int | None = None):
        from bench.grid import Cell, cell_id
        from gbmpo import config as C

        seed = self.base.run.seed if seed is None else seed
        data = self.base.to_dict()
        data["run"]["seed"] = seed
        rel = str(self.params_path(cand).relative_to(self.dir.resolve()))
        # the id hashes the parameter file's path relative to the search directory, so a
        # committed search continues from any checkout; the cell itself carries the values
        # (with that path as their label), so it runs on any node and names no local path
        data["divergence"]["params"] = {"params_path": rel}
        canonical = C.from_dict(data)
        data["divergence"]["params"] = {"params": [float(x) for x in cand.params],
                                        "source": rel}
        cfg = C.from_dict(data)
        b = self.base
        grid_id = cell_id(b.task.name, b.algorithm.name, "neural_mirror", seed, canonical)
        cid = f"{cand.key}__{grid_id}"
        return Cell(cid, b.task.name, b.algorithm.name, "neural_mirror", seed, cfg,
                    base=b.pretrain.seed)

    def _fitness(self, results: list[dict]) -> Fitness:
        fits = [fitness_from_result(r) for r in results]
        if len(fits) == 1:
            return fits[0]
        values = [f.value for f in fits]  # a failed seed scores 0, as a failed run does
        failed = all(f.failed for f in fits)
        reasons = "; ".join(f"seed {s}: {f.reason}" for s, f in zip(self.seeds, fits,
                                                                   strict=True) if f.failed)
        return Fitness(float(np.mean(values)), failed, reasons or None, attrs={
            "seed_fitness": values, "seeds": list(self.seeds),
            "cell_ids": [f.attrs.get("cell_id") for f in fits]})

    def lookup(self, cand: Candidate) -> Fitness | None:
        from bench.runner import FINISHED, read_result

        results = []
        for seed in self.seeds:
            result, _ = read_result(self.dir / "cells" / self.cell(cand, seed).cell_id)
            if not result or result["status"] not in FINISHED:
                return None
            results.append(result)
        return self._fitness(results)

    def evaluate(self, cands: list[Candidate], report: Report) -> None:
        from bench.executors import Job
        from bench.runner import finalize, read_result
        from gbmpo.divergences.neural_mirror import save_params

        jobs, by_dir, waiting = [], {}, {}
        for c in cands:
            done = self.lookup(c)
            if done is not None:  # the cell store: finished cells are read back, not rerun
                report(c, done)
                continue
            save_params(self.params_path(c), c.params, {
                "source": "gbmpo-bench es candidate", "study": self.study_name,
                "trial": c.number, "key": c.key, "generation": c.generation})
            waiting[c.key] = {}
            for seed in self.seeds:
                cell = self.cell(c, seed)
                result, _ = read_result(self.dir / "cells" / cell.cell_id)
                if result and result["status"] in ("completed", "diverged"):
                    waiting[c.key][seed] = result  # this seed finished before a restart
                    continue
                job = Job(cell, self.dir / "cells" / cell.cell_id, self.resources)
                jobs.append(job)
                by_dir[job.cell_dir] = (c, seed)
        if not jobs:
            return
        if not self._prepared:
            self.executor.prepare(jobs, self.dir)
            self._prepared = True
        abandoned: set[str] = set()

        def on_done(job, outcome) -> None:
            cand, seed = by_dir[job.cell_dir]
            if cand.key in abandoned:
                return
            if finalize(self.grid, job, outcome) == "busy":
                abandoned.add(cand.key)
                report(cand, Fitness(0.0, abandoned=True,
                                     reason="abandoned: a cell is locked by another process"))
                return
            result, why = read_result(job.cell_dir)
            waiting[cand.key][seed] = result or {"status": "failed", "reason": why,
                                                 "cell_id": job.cell.cell_id}
            if len(waiting[cand.key]) == len(self.seeds):
                report(cand, self._fitness([waiting[cand.key][s] for s in self.seeds]))

        self.executor.execute(jobs, on_done)


# ---- outputs -------------------------------------------------------------------------------
def write_outputs(search: Search, search_dir: Path, storage_spec: str | None,
                  extra: dict | None = None) -> Path:
    """best_params.json (the artifact), fitness_history.csv and convergence.png."""
    import torch

    from gbmpo.divergences.neural_mirror import convexity_report, save_params

    rows = search.history()
    params, selected = search.result_params()
    best = search.best_candidate()
    prov = {
        "kind": ARTIFACT_KIND, "source": "gbmpo-bench es",
        "study": search.study.study_name, "storage": redact(storage_spec) or "journal file "
        "study.journal in the search directory", "strategy": search.spec.strategy,
        "generation": len(rows), "selected": selected, "settings": asdict(search.spec.es),
        "fitness_history": rows,
        "best_candidate": None if best is None else {
            "trial": best.number, "key": best.user_attrs.get("es_key", f"t{best.number:05d}"),
            "fitness": best.value},
        "convexity": convexity_report(torch.tensor(params, dtype=torch.float64)),
        **(extra or {}),
    }
    search_dir.mkdir(parents=True, exist_ok=True)
    artifact = search_dir / ARTIFACT_NAME
    with tempfile.TemporaryDirectory(dir=search_dir, prefix=".artifact-") as tmp:
        save_params(Path(tmp) / ARTIFACT_NAME, params, prov)  # then one atomic rename
        os.replace(Path(tmp) / ARTIFACT_NAME, artifact)
    write_history(rows, search_dir / "fitness_history.csv")
    plot_history(rows, search_dir / "convergence.png", f"{search.spec.strategy}: "
                 f"{search.study.study_name}")
    return artifact


def write_history(rows: list[dict], path: Path) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols or ["generation"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def plot_history(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.6))
    g = [r["generation"] for r in rows]
    ax.plot(g, [r["mean"] for r in rows], "o-", label="population mean")
    ax.plot(g, [r["max"] for r in rows], "s--", label="generation best")
    ax.plot(g, [r["best_so_far"] for r in rows], "k:", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("validation accuracy (fitness)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# ---- the command ---------------------------------------------------------------------------
def run_search(*, spec: SearchSpec, study_name: str, search_dir: Path, evaluator: Evaluator,
               storage_spec: str | None = None, cell_config: dict | None = None, batch: int = 1,
               poll_s: float = 2.0, stale_after: float = 600.0, heartbeat_s: float = 30.0,
               out: TextIO | None = None, extra: dict | None = None) -> Search:
    """Open (or resume) the study, drive it to the end, write the outputs."""
    storage = open_storage(storage_spec, search_dir)
    study = open_study(storage, study_name, spec, cell_config)
    search = Search(study, spec, search_dir=search_dir, batch=batch, poll_s=poll_s,
                    stale_after=stale_after, heartbeat_s=heartbeat_s, out=out)
    search.run(evaluator)
    write_outputs(search, search_dir, storage_spec, extra)
    return search


def cli(args: Any, command=None) -> int:
    """`gbmpo-bench es` with parsed arguments (see gbmpo/commands/es.py)."""
    from bench.executors import DEFAULT_COMMAND, LocalExecutor
    from bench.grid import Resources
    from bench.ray_executor import RayExecutor
    from bench.runner import default_workers
    from gbmpo.config import ConfigError

    if args.fitness_seeds < 1:
        print(f"error: --fitness-seeds must be >= 1, got {args.fitness_seeds}", file=sys.stderr)
        return 2
    try:
        spec = SearchSpec(args.strategy, args.generations, EsSettings(
            population=args.population, sigma=args.sigma, sigma_decay=args.sigma_decay,
            alpha=args.alpha, init_scale=args.init_scale, seed=args.seed))
        base = cell_base(args.task, args.algorithm, args.steps, args.seed, args.overrides)
        sizes = check_splits(base)
    except (SearchError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = args.study_name or f"{args.task}__{args.algorithm}__{args.strategy}__s{args.seed}"
    search_dir = Path(args.out or Path("runs") / "es" / name)
    resources = Resources(num_cpus=args.num_cpus, num_gpus=args.num_gpus, timeout_s=args.timeout)
    command = command or DEFAULT_COMMAND
    if args.executor == "ray":
        executor: Any = RayExecutor(args.address, command, max_in_flight=args.workers)
        batch = args.workers or args.population
    else:
        batch = args.workers or default_workers(args.num_cpus)
        executor = LocalExecutor(batch, command)
    print(f"{args.strategy} search {name!r}: population {args.population}, {args.generations} "
          f"generations, {args.steps} steps x {args.fitness_seeds} RL seed(s) per candidate, "
          f"scored on {base.eval.n} of "
          f"{sizes['validation']} validation examples (disjoint from train"
          f"{' and test' if 'test' in sizes else ''}) -> {search_dir}", flush=True)
    cell_config = base.to_dict()
    ray = None
    try:
        if args.executor == "ray":  # one connection for the whole search, not one per batch
            try:
                import ray
            except ImportError:
                raise RuntimeError("the ray executor needs Ray: "
                                   "pip install 'gbmpo-bench[ray]'") from None
            ray.init(address=args.address, log_to_driver=False, include_dashboard=False)
        search = run_search(
            spec=spec, study_name=name, search_dir=search_dir, storage_spec=args.storage,
            evaluator=CellEvaluator(search_dir, base, executor, resources, name,
                                    seeds=[args.seed + i for i in range(args.fitness_seeds)]),
            cell_config=cell_config, batch=batch, stale_after=args.stale_after,
            extra={"task": args.task, "algorithm": args.algorithm, "steps": args.steps,
                   "fitness_seeds": args.fitness_seeds, "cell_config": cell_config})
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # pretraining failed, or the executor is unavailable
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    print_history(search.history(), sys.stdout)
    print(f"artifact: {search_dir / ARTIFACT_NAME}  (use it with divergence.name = "
          f"\"neural_mirror_es\", divergence.params.params_path = that path)")
    return 0


def print_history(rows: list[dict], out: TextIO) -> None:
    print(f"{'generation':>10} {'mean':>8} {'max':>8} {'best so far':>12} {'failed':>6}", file=out)
    for r in rows:
        verdict = {True: "  accepted", False: "  rejected"}.get(r.get("accepted"), "")
        print(f"{r['generation']:>10} {r['mean']:>8.4f} {r['max']:>8.4f} "
              f"{r['best_so_far']:>12.4f} {r['failed']:>6}{verdict}", file=out)
