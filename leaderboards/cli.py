"""Command line for the leaderboard; argparse only at import, so any CLI can embed it cheaply.

Exit status: 0 when the tables were written, even if some result files were excluded (they
are listed on stderr and in the Markdown notes); 1 with `--strict` when any file was excluded
or only partly read; 2 when the input is unusable (no such directory, unknown metric or
baseline).
"""

from __future__ import annotations

import argparse
import sys
import warnings

HELP = ("Rebuild leaderboard tables (md, csv, html, tex), report.html and plots from a results "
        "directory.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="a grid's results folder, e.g. results/tiny (holds grid.json and "
                             "one folder per cell)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write the files (default: RESULTS_DIR/leaderboard)")
    parser.add_argument("--baseline", metavar="ALGO:DIV", default=None,
                        help="group to compare against within each task (default: the "
                             "manifest's baseline)")
    parser.add_argument("--metric", metavar="NAME", default=None,
                        help="primary metric to rank and test (default: the manifest's "
                             "primary_metric, else accuracy)")
    parser.add_argument("--budgets", metavar="X,Y,...", default=None,
                        help="sqrt(KL(pi||pi_0)) budgets of the matched-budget table (default: "
                             "the 25/50/75%% points of the range every swept divergence covers)")
    parser.add_argument("--budget-reference", metavar="DIV", default="kl_k3",
                        help="divergence the matched-budget table compares every other one "
                             "with (default: %(default)s; 'none' for no comparison)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if any result file was excluded or only partly read")


def run(args: argparse.Namespace) -> int:
    from leaderboards.reading import LeaderboardWarning
    from leaderboards.writing import build

    try:
        budgets = None
        if args.budgets:
            try:
                budgets = sorted(float(x) for x in args.budgets.split(","))
            except ValueError:
                raise ValueError(f"--budgets must be numbers separated by commas, got "
                                 f"{args.budgets!r}") from None
        reference = None if args.budget_reference == "none" else args.budget_reference
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LeaderboardWarning)  # listed below instead
            summary = build(args.results_dir, args.out, baseline=args.baseline,
                            metric=args.metric, plots=not args.no_plots, budgets=budgets,
                            budget_reference=reference)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.markdown)
    print(f"wrote {len(summary.files)} files to {summary.out_dir}:")
    for f in summary.files:
        print(f"  {f}")
    if summary.problems:
        print(f"warning: {len(summary.problems)} file(s) excluded or only partly read "
              f"(paths relative to {args.results_dir}):", file=sys.stderr)
        for p in summary.problems:
            print(f"  {p}", file=sys.stderr)
        if args.strict:
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaderboards", description=HELP,
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
