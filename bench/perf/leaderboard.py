"""Time the leaderboard on a large synthetic grid.

    python bench/perf/leaderboard.py [--cells 10000] [--seeds 10] [--keep DIR]

Writes N synthetic result cells (result.json with per-item outcomes of 200 items and 16
samples, 3 bases per group, + a 7-line metrics.jsonl each; about 2% failed,
1% diverged, one corrupt result.json) and a grid.json that lists a few percent more cells
(incomplete) into a temporary directory, then times, in seconds of wall clock and of this
process's CPU (the CPU figure is the one to compare when other jobs share the machine):

- load:   `leaderboards.load` (grid.json, every result.json and metrics.jsonl)
- tables: summary (two-level bootstrap over bases, seeds and 200 evaluation items per cell) +
          per-seed + curve tables and leaderboard.{md,csv,html,tex}, seeds.csv, curves.csv
- report: report.html
- plots:  every PNG (timed separately; not part of the table-rebuild goal)

Goal (issue 5): load + tables < 2 s for 10,000 cells. File contents are seeded, so runs are
comparable; the OS file cache is warm (files were just written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

import numpy as np  # noqa: E402

from gbmpo.evaluation import pass_at_k  # noqa: E402
from leaderboards.plots import write_plots  # noqa: E402
from leaderboards.reading import LeaderboardWarning, load  # noqa: E402
from leaderboards.report import write_report  # noqa: E402
from leaderboards.writing import make_board, write_tables  # noqa: E402

N_ITEMS, K, N_BASES = 200, 16, 3  # evaluation items and samples per cell; bases per group


def _axes(n_cells: int, n_seeds: int) -> tuple[list[str], list[str], list[str]]:
    """Split n_cells / n_seeds groups into tasks x algorithms x divergences (about 1:2:4)."""
    groups = max(1, math.ceil(n_cells * 1.02 / n_seeds))  # 1% incomplete + headroom
    n_task = max(1, round((groups / 8) ** (1 / 3)))
    n_algo = max(1, round(math.sqrt(groups / n_task / 2)))
    n_div = max(1, math.ceil(groups / n_task / n_algo))
    return ([f"task{i}" for i in range(n_task)], [f"algo{i}" for i in range(n_algo)],
            [f"div{i}" for i in range(n_div)])


def generate(root: Path, n_cells: int, n_seeds: int, seed: int = 0) -> int:
    """Write the synthetic grid under root; return the number of result.json files."""
    rng = np.random.default_rng(seed)
    tasks, algos, divs = _axes(n_cells, n_seeds)
    manifest, written = [], 0
    for t in tasks:
        for a in algos:
            for d in divs:
                skill = rng.uniform(0.5, 0.9)
                for s in range(n_seeds):
                    cid = f"{t}__{a}__{d}__s{s}__{rng.integers(1 << 32):08x}"
                    manifest.append({"cell_id": cid, "task": t, "algorithm": a,
                                     "divergence": d, "seed": s, "base": s % N_BASES,
                                     "sweep": {}})
                    if written >= n_cells:
                        continue
                    u = rng.random()
                    if u < 0.01:  # incomplete: in the manifest, never written
                        continue
                    status = "failed" if u < 0.03 else "diverged" if u < 0.04 else "completed"
                    acc = float(np.clip(skill + rng.normal(0, 0.03), 0, 1))
                    tokens = float(rng.uniform(10, 60))
                    correct = rng.random(N_ITEMS) < acc  # per-item outcomes, as cells store
                    of_k = rng.binomial(K, np.clip(acc + rng.normal(0, 0.2, N_ITEMS), 0, 1))
                    kl = float(rng.uniform(0.001, 0.1))
                    result = {
                        "schema_version": 1, "cell_id": cid, "grid": "perf", "task": t,
                        "algorithm": a, "divergence": d, "seed": s, "status": status,
                        "base": {"seed": s % N_BASES}, "sweep": {},
                        "reason": None if status == "completed" else "synthetic",
                        "diverged_step": 17 if status == "diverged" else None,
                        "metrics": {
                            "accuracy": {"value": acc, "direction": "max"},
                            "accuracy_strict": {"value": acc - 0.01, "direction": "max"},
                            "base_accuracy": {"value": 0.5, "direction": "max"},
                            "response_tokens_mean": {"value": tokens, "direction": "min"},
                            "reg_pg_ratio": {"value": float(rng.uniform(0, 0.1)),
                                             "direction": "none"},
                            "train_reward_last": {"value": acc - 0.05, "direction": "max"},
                            **{f"pass@{k}": {"value": float(np.mean(
                                [pass_at_k(K, int(c), k) for c in of_k])), "direction": "max"}
                               for k in (1, 2, 4, 8, 16)},
                            f"mean@{K}": {"value": float(of_k.mean() / K), "direction": "max"},
                            "kl_pi_pi0": {"value": kl, "direction": "none"},
                            "kl_pi0_pi": {"value": 1.2 * kl, "direction": "none"},
                            "entropy": {"value": 0.3, "direction": "none"}},
                        "eval": {"split": "test", "n": N_ITEMS, "greedy": True, "samples": K},
                        "items": {"accuracy": "".join("1" if x else "0" for x in correct),
                                  "correct_of_k": of_k.tolist()},
                        "wall_time_s": float(rng.uniform(60, 120)),
                        "versions": {"task": "1", "schema": 1},
                        "provenance": {"git_hash": "0" * 40, "git_dirty": False,
                                       "python": "3.11", "libraries": {"torch": "2"},
                                       "hardware": {"cpu": "x", "cores": 2, "gpu": None},
                                       "sandbox_isolation": None},
                        "config": {"run": {"seed": s, "steps": 40}},
                    }
                    cell = root / cid
                    cell.mkdir()
                    text = json.dumps(result)
                    if written == 0:
                        text = text[: len(text) // 2]  # one corrupt (truncated) file
                    (cell / "result.json").write_text(text)
                    lines = [json.dumps({"kind": "train", "step": k, "reward_mean": acc - 0.1
                                         + 0.02 * k, "reward_std": 0.1, "loss": 0.5,
                                         "reg_pg_ratio": 0.01, "response_len_mean": tokens})
                             for k in range(1, 6)]
                    lines += [json.dumps({"kind": "eval", "step": k, "accuracy": acc - 0.1
                                          + 0.02 * k, "response_tokens_mean": tokens})
                              for k in (0, 5)]
                    (cell / "metrics.jsonl").write_text("\n".join(lines) + "\n")
                    written += 1
    (root / "grid.json").write_text(json.dumps({
        "schema_version": 1, "name": "perf", "primary_metric": "accuracy",
        "baseline": {"algorithm": algos[0], "divergence": divs[0]}, "cells": manifest}))
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=10_000, help="result.json files to write")
    ap.add_argument("--seeds", type=int, default=10, help="seeds per group")
    ap.add_argument("--keep", metavar="DIR", help="write the grid here and keep it")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp) / "results"
        root.mkdir(parents=True, exist_ok=False)
        t0 = time.perf_counter()
        n = generate(root, args.cells, args.seeds)
        print(f"generated {n} cells in {time.perf_counter() - t0:.1f} s "
              f"({os.cpu_count()} CPUs visible)")

        out = root / "leaderboard"
        clock = _Clock()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LeaderboardWarning)
            results = load(root)
        t_load = clock.lap()
        board, seeds, curves = make_board(results)
        _, files = write_tables(board, seeds, curves, out)
        t_tables = clock.lap()
        page = write_report(out / "report.html", results, board, seeds, curves)
        t_report = clock.lap()
        plots = write_plots(board, curves, out / "plots", "accuracy")
        t_plots = clock.lap()

        print(f"cells: {len(results.cells)} rows ({(results.cells['status'] != 'completed').sum()}"
              f" not completed), groups: {len(board.table)}, curve rows: {len(results.curves)}, "
              f"problems: {len(results.problems)}")
        print("                wall    cpu")
        for name, (wall, cpu) in (("load", t_load), ("tables", t_tables),
                                  ("load + tables", (t_load[0] + t_tables[0],
                                                     t_load[1] + t_tables[1])),
                                  ("report.html", t_report), ("plots", t_plots)):
            print(f"{name:14s} {wall:5.2f}  {cpu:5.2f}")
        print(f"({len(files)} table files, {len(plots)} PNGs, report.html "
              f"{page.stat().st_size / 1e6:.1f} MB; goal: load + tables + report in seconds)")


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out

if __name__ == "__main__":
    main()
