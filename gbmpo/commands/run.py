"""Run every cell of a grid, resumably; finished cells are skipped, failed ones rerun.

    gbmpo-bench run                      # bench/grids/tiny.toml, local, one cell per core
    gbmpo-bench run smoke --dry-run      # list the cells and whether each is done
    gbmpo-bench run tiny --filter 'divergence=kl_k3|probl2,seed=0'
    gbmpo-bench run paper --executor ray --address HOST:6379

GRID is a grid file or the name of one in bench/grids/. Results go to
RESULTS/<grid name>/<cell_id>/ (config.toml, metrics.jsonl, result.json, log.txt), with the
manifest RESULTS/<grid name>/grid.json; the leaderboard is printed at the end when the
`leaderboards` package is available.

Filter: comma-separated terms that must all hold: KEY=PAT[|PAT..], KEY!=PAT[|PAT..], or a bare
glob on the cell id; KEY is task, algorithm, divergence, seed, base, id or a swept key
(e.g. divergence.beta=0.1|1.0); PAT is an fnmatch glob.

Exit status: 0 when every selected cell finished (completed or diverged); 1 when any failed, timed
out or was running under another runner; 2 for a bad grid, filter, or failed pretraining; 130
when interrupted (Ctrl-C or SIGTERM; running cells are stopped and rerun next time).
"""

from __future__ import annotations

import argparse
import sys

HELP = "run a grid of cells (local processes or Ray), resuming where it stopped"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", nargs="?", default=None, metavar="GRID",
                        help="grid file or name in bench/grids/ (default: tiny)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local subprocesses or Ray tasks (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="cells at once (local default: cores / resources.num_cpus; ray: "
                        "limit on tasks in flight, default unlimited)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster address, e.g. HOST:6379 (default: start a local Ray)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the cell table (id, task, algorithm, divergence, seed, "
                        "status) and exit")
    parser.add_argument("--filter", default=None, metavar="EXPR",
                        help="select cells, e.g. 'divergence=kl_k3,algorithm=grpo' or "
                        "'*__s0__*'")
    parser.add_argument("--results", default="runs", metavar="DIR",
                        help="results root; cells go to DIR/<grid name>/ (default: %(default)s; "
                        "the committed reference results live in results/)")
    parser.add_argument("--no-leaderboard", action="store_true",
                        help="do not build and print the leaderboard at the end")


def run(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    from bench.runner import cli  # torch loads with the registries, only when running

    return cli(args)
