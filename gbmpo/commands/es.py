"""Search neural-mirror-map parameters: GBMPO's evolutionary strategy or Optuna's CMA-ES.

    gbmpo-bench es                                   # GBMPO defaults: N=10, 15 generations, T=100
    gbmpo-bench es --population 4 --generations 2 --steps 10 --out results/es-tiny
    gbmpo-bench es --strategy cmaes --workers 4
    gbmpo-bench es --storage postgresql://user@db/es --executor ray --address HOST:6379

Every candidate is a training cell (divergence neural_mirror with the candidate's parameters,
scored on the task's validation split, which must be disjoint from train and test) run by the
local or Ray executor; its fitness is the validation accuracy (pass@1 for code), 0 when the run
fails or diverges. The search is one Optuna study (default storage: a journal file in the
search directory): rerunning the same command resumes it, and several processes (on several
machines, with --storage URL) started on one study share its candidates without running any
twice.

Outputs in OUT (default runs/es/<study>): best_params.json, the artifact for divergence
`neural_mirror_es` (divergence.params.params_path = its path); fitness_history.csv;
convergence.png; candidates/ (parameter files) and cells/ (one cell per candidate).
See docs/es.md.
"""

from __future__ import annotations

import argparse
import sys

HELP = "search neural mirror map parameters (GBMPO ES or CMA-ES), resumable and distributed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="arith", help="task (default: %(default)s)")
    p.add_argument("--algorithm", default="dr_grpo",
                   help="algorithm of every candidate run (default: %(default)s, GBMPO's NM-GRPO)")
    p.add_argument("--strategy", choices=("gbmpo-es", "cmaes"), default="gbmpo-es",
                   help="GBMPO's ES or Optuna's (separable) CMA-ES (default: %(default)s)")
    p.add_argument("--population", type=int, default=10, metavar="N",
                   help="candidates per generation, even (default: %(default)s)")
    p.add_argument("--generations", type=int, default=15, metavar="K",
                   help="generations (may be raised when resuming; default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, metavar="T",
                   help="RL steps per candidate run (default: %(default)s)")
    p.add_argument("--sigma", type=float, default=0.01,
                   help="perturbation scale at generation 0 (default: %(default)s)")
    p.add_argument("--sigma-decay", type=float, default=0.99,
                   help="sigma_k = sigma * decay**k (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="ES step size (gbmpo-es only; default: %(default)s)")
    p.add_argument("--init-scale", type=float, default=0.01,
                   help="phi_0 = init_scale * N(0, 1) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="search seed, also run.seed of every candidate (default: %(default)s)")
    p.add_argument("--fitness-seeds", type=int, default=1, metavar="N",
                   help="train each candidate with N RL seeds (seed, seed+1, ...; the same for "
                   "every candidate) and score the mean; with N >= 2 the history reports the "
                   "fitness noise beside the spread of candidates (default: %(default)s)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage: an RDB URL (sqlite:///es.db, postgresql://...) or a "
                   "journal file path (default: OUT/study.journal)")
    p.add_argument("--study-name", default=None,
                   help="default: <task>__<algorithm>__<strategy>__s<seed>")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="search directory (default: runs/es/<study name>)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local subprocesses or Ray tasks (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="candidates run at once by this process (local default: cores / "
                   "num-cpus; ray default: the population)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per candidate cell")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per candidate cell (Ray)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="seconds before a candidate cell is killed and scored 0")
    p.add_argument("--stale-after", type=float, default=600.0, metavar="S",
                   help="a candidate claimed on another host without a heartbeat for this "
                   "long is taken for abandoned and rerun (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the candidates' run config, e.g. --set divergence.beta=1e-4 "
                   "--set eval.n=100 (keys the search owns are refused)")


def run(args: argparse.Namespace) -> int:
    for name in ("population", "generations", "steps", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    from bench.es import cli  # optuna and torch load only when a search runs

    return cli(args)
