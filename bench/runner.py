"""`gbmpo-bench run`: run every cell of a grid, resumably, and record each outcome.

Results go to RESULTS/<grid name>/<cell_id>/ (RESULTS defaults to ./results). Before any cell
starts, RESULTS/<grid>/grid.json lists every cell of the grid. A cell whose result.json says
`completed` or `diverged` is finished and skipped on the next run; any other cell is (re)run.
A cell that crashes, times out or exits without a result gets a result.json written here with
status `failed` or `timeout`, a `reason` and the last lines of its log (`log_tail`).

Filter syntax (`--filter`): comma-separated terms, all of which must hold.
    KEY=PAT[|PAT...]   the cell's KEY matches one of the patterns
    KEY!=PAT[|PAT...]  it matches none of them
    PAT                a glob on the cell id
KEY is task, algorithm, divergence, seed, base, id or a swept config key (e.g.
divergence.beta); a PAT is an fnmatch glob (`*`, `?`, `[..]`). Examples:
`divergence=kl_k3,algorithm=grpo`, `divergence!=none`, `seed=0|1`, `base=0`, `*__s0__*`.

Exit status: 0 when every selected cell is finished; 1 when any failed, timed out or is being
run by another runner; 2 for a bad grid, filter or pretraining failure; 130 when interrupted.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from bench.executors import DEFAULT_COMMAND, CellCommand, Job, LocalExecutor, Outcome, atomic_write
from bench.grid import AXIS_KEYS, Cell, Grid, GridError, expand, format_value, load_grid, manifest
from bench.ray_executor import RayExecutor
from gbmpo.config import ConfigError

GRIDS_DIR = Path(__file__).resolve().parent / "grids"
DEFAULT_GRID = "tiny"
FINISHED = ("completed", "diverged")
STATUSES = ("completed", "diverged", "failed", "timeout")
LOG_TAIL_LINES = 40


class FilterError(ValueError):
    """A malformed --filter expression."""


# ---- locating grids and filtering cells --------------------------------------------------
def resolve_grid(arg: str | None) -> Path:
    """A path to a TOML file, or the bare name of a grid in bench/grids/ (default: tiny)."""
    arg = arg or DEFAULT_GRID
    path = Path(arg)
    if path.is_file():
        return path
    if path.suffix != ".toml" and len(path.parts) == 1 and (GRIDS_DIR / f"{arg}.toml").is_file():
        return GRIDS_DIR / f"{arg}.toml"
    known = ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.toml")))
    raise GridError(f"no grid file {arg!r} and no grid of that name in {GRIDS_DIR} "
                    f"(grids there: {known})")


def parse_filter(expr: str, cells: list[Cell]) -> Callable[[Cell], bool]:
    """Compile a --filter expression (module docstring) into a predicate over cells. Axis
    patterns without wildcards must name a value the grid has, so typos fail loudly."""
    swept = sorted({k for c in cells for k, _ in c.sweep})
    keys = (*AXIS_KEYS, "id", *swept)

    def value_of(c: Cell, key: str) -> str | None:
        if key == "id":
            return c.cell_id
        if key in AXIS_KEYS:
            return str(c.axis_values()[key])
        v = c.sweep_values().get(key)
        return None if v is None else format_value(v)

    tests = []
    for term in expr.split(","):
        term = term.strip()
        if not term:
            raise FilterError(f"empty term in filter {expr!r}; terms are separated by one ','")
        if "=" not in term:
            tests.append(lambda c, p=term: fnmatch.fnmatchcase(c.cell_id, p))
            continue
        key, _, pats = term.partition("=")
        negate = key.endswith("!")
        key = key.rstrip("!").strip()
        patterns = [p.strip() for p in pats.split("|")]
        if key not in keys:
            raise FilterError(f"unknown filter key {key!r} in {term!r}; valid keys: "
                              f"{', '.join(keys)} (or a bare glob on the cell id)")
        if not all(patterns):
            raise FilterError(f"empty pattern in {term!r}; write KEY=PAT or KEY=PAT1|PAT2")
        if key != "id":
            have = sorted({v for c in cells if (v := value_of(c, key)) is not None})
            for p in patterns:
                if not any(fnmatch.fnmatchcase(v, p) for v in have):
                    raise FilterError(f"filter {term!r}: no {key} matches {p!r}; the grid has "
                                      f"{', '.join(have)}")

        def test(c: Cell, key: str = key, patterns: list = patterns, negate: bool = negate) -> bool:
            value = value_of(c, key)
            hit = value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)
            return hit != negate

        tests.append(test)
    return lambda c: all(t(c) for t in tests)


def select(cells: list[Cell], expr: str | None) -> list[Cell]:
    if not expr:
        return list(cells)
    keep = parse_filter(expr, cells)
    chosen = [c for c in cells if keep(c)]
    if not chosen:
        raise FilterError(f"filter {expr!r} matches none of the {len(cells)} cells")
    return chosen


# ---- reading and writing results ---------------------------------------------------------
def read_result(cell_dir: Path) -> tuple[dict | None, str | None]:
    """(result, None) for a well-formed result.json, (None, why) otherwise."""
    path = cell_dir / "result.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no result.json"
    except (OSError, ValueError) as e:
        return None, f"result.json is unreadable: {e}"
    if not isinstance(data, dict) or data.get("status") not in STATUSES:
        status = data.get("status") if isinstance(data, dict) else None
        return None, f"result.json has status {status!r}, expected one of {', '.join(STATUSES)}"
    return data, None


def cell_state(cell_dir: Path) -> str:
    """'done' or 'todo', with the previous outcome for cells that will be rerun or diverged."""
    result, why = read_result(cell_dir)
    if result is None:
        return "todo" if why == "no result.json" else "todo (invalid result)"
    status = result["status"]
    if status == "completed":
        return "done"
    return f"done ({status})" if status in FINISHED else f"todo ({status})"


def log_tail(cell_dir: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = (cell_dir / "log.txt").read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_GIT: dict[str, Any] = {}


def _git_state() -> dict[str, Any]:
    if not _GIT:
        repo = Path(__file__).resolve().parent.parent
        try:
            head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                                  capture_output=True, text=True, timeout=10)
            dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "-uno"],
                                   capture_output=True, text=True, timeout=10)
            ok = head.returncode == 0
            _GIT.update(git_hash=head.stdout.strip() if ok else None,
                        git_dirty=bool(dirty.stdout.strip()) if ok else None)
        except (OSError, subprocess.TimeoutExpired):
            _GIT.update(git_hash=None, git_dirty=None)
    return dict(_GIT)


def _identity(cell: Cell) -> dict[str, Any]:
    """The grid fields of a cell's result.json: axis values, its base (an object whose `seed`
    is the pretraining seed; the trainer adds the checksum) and its swept config values."""
    out: dict[str, Any] = {k: v for k, v in cell.axis_values().items() if k != "base"}
    return {**out, "base": {"seed": cell.base}, "sweep": cell.sweep_values()}


def failure_result(grid: Grid, cell: Cell, status: str, reason: str, outcome: Outcome,
                   tail: str) -> dict[str, Any]:
    """result.json for a cell that produced none (schema of docs/results.md)."""
    return {
        "schema_version": 1, "cell_id": cell.cell_id, "grid": grid.name, **_identity(cell),
        "status": status, "reason": reason, "diverged_step": None, "metrics": {}, "eval": None,
        "wall_time_s": round(outcome.wall_s, 3), "returncode": outcome.returncode,
        "log_tail": tail, "versions": {"schema": 1},
        "provenance": {**_git_state(), "python": platform.python_version(),
                       "hardware": {"host": outcome.host}, "recorded_by": "gbmpo-bench run"},
        "config": cell.config.to_dict(),
    }


def stamp(grid: Grid, cell: Cell, cell_dir: Path, result: dict, force: bool = False) -> None:
    """Fill the identity fields the trainer cannot know (grid name, cell id) into a cell's
    result.json. Also applied to finished cells found at start-up, in case a runner was killed
    between a cell finishing and this step."""
    stamped = {**result, "grid": grid.name, "cell_id": cell.cell_id}
    for k, v in _identity(cell).items():
        stamped.setdefault(k, v)
    if force or stamped != result:
        atomic_write(cell_dir / "result.json", json.dumps(stamped, indent=2) + "\n")


def _failure_reason(outcome: Outcome, timeout_s: float, why: str) -> tuple[str, str]:
    if outcome.timed_out:
        return "timeout", f"timed out after {timeout_s:g} s (resources.timeout_s)"
    if outcome.error:
        return "failed", outcome.error
    rc = outcome.returncode
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return "failed", f"killed by {name} ({why})"
    return "failed", f"exited with code {rc} ({why})"


def finalize(grid: Grid, job: Job, outcome: Outcome) -> str:
    """Turn a finished process into a recorded outcome; returns the cell's status."""
    if outcome.busy:
        return "busy"
    cell, cell_dir = job.cell, job.cell_dir
    result, why = read_result(cell_dir)
    if result is not None:
        if result["status"] not in FINISHED:  # the trainer recorded its own failure
            result.setdefault("reason", f"exited with code {outcome.returncode}")
            result.setdefault("log_tail", log_tail(cell_dir))
        stamp(grid, cell, cell_dir, result, force=result["status"] not in FINISHED)
        return result["status"]
    status, reason = _failure_reason(outcome, job.resources.timeout_s, why or "")
    data = failure_result(grid, cell, status, reason, outcome, log_tail(cell_dir))
    atomic_write(cell_dir / "result.json", json.dumps(data, indent=2) + "\n")
    return status


# ---- the run -----------------------------------------------------------------------------
def print_table(cells: list[Cell], states: dict[str, str], out: TextIO) -> None:
    rows = [("cell_id", "task", "algorithm", "divergence", "base", "seed", "status")]
    rows += [(c.cell_id, c.task, c.algorithm, c.divergence, str(c.base), str(c.seed),
              states[c.cell_id]) for c in cells]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=out)
    n_done = sum(s.startswith("done") for s in states.values())
    print(f"{len(cells)} cells: {n_done} done, {len(cells) - n_done} to run", file=out)


def run_grid(grid_path: str | Path, executor: Any, *, results_root: str | Path = "runs",
             cell_filter: str | None = None, dry_run: bool = False, leaderboard: bool = True,
             progress: bool = True, out: TextIO | None = None) -> int:
    """Run (or, with dry_run, list) a grid's cells with `executor`; returns the exit status."""
    out = out or sys.stdout
    grid = load_grid(resolve_grid(str(grid_path)))
    cells = expand(grid)
    chosen = select(cells, cell_filter)
    grid_dir = Path(results_root) / grid.name
    states = {c.cell_id: cell_state(grid_dir / c.cell_id) for c in chosen}
    if dry_run:
        print_table(chosen, states, out)
        return 0
    for c in chosen:
        if states[c.cell_id].startswith("done"):
            result, _ = read_result(grid_dir / c.cell_id)
            if result is not None:
                stamp(grid, c, grid_dir / c.cell_id, result)
    atomic_write(grid_dir / "grid.json", json.dumps(manifest(grid, cells), indent=2) + "\n")
    jobs = [Job(c, grid_dir / c.cell_id, grid.resources)
            for c in chosen if not states[c.cell_id].startswith("done")]
    counts = Counter({"skipped": len(chosen) - len(jobs)})
    print(f"grid {grid.name}: {len(chosen)} cells selected, {len(chosen) - len(jobs)} already "
          f"finished, {len(jobs)} to run -> {grid_dir}", file=out)
    interrupted = False
    if jobs:
        try:
            with _sigterm_as_interrupt():
                executor.prepare(jobs, grid_dir)
                _execute(grid, executor, jobs, counts, progress)
        except KeyboardInterrupt:
            interrupted = True
        except RuntimeError as e:  # pretraining failed, or the executor is unavailable
            print(f"error: {e}", file=sys.stderr)
            return 2
    finished = counts["skipped"] + counts["completed"] + counts["diverged"]
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if v), file=out)
    if interrupted:
        print("interrupted: running cells were stopped and will rerun next time", file=out)
        return 130
    if leaderboard and finished:
        _print_leaderboard(grid_dir, out)
    return 0 if finished == len(chosen) else 1


def _execute(grid: Grid, executor: Any, jobs: list[Job], counts: Counter, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="cell", desc=grid.name, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)

    def on_done(job: Job, outcome: Outcome) -> None:
        status = finalize(grid, job, outcome)
        counts[status] += 1
        if status not in FINISHED:
            note = "running elsewhere, skipped" if status == "busy" else status
            bar.write(f"{job.cell.cell_id}: {note}", file=sys.stderr)
        bad = sum(v for k, v in counts.items() if k not in (*FINISHED, "skipped"))
        bar.set_postfix(ok=counts["completed"] + counts["diverged"], failed=bad, refresh=False)
        bar.update(1)

    try:
        executor.execute(jobs, on_done)
    finally:
        bar.close()


class _sigterm_as_interrupt:
    """SIGTERM stops the run like Ctrl-C: cells are killed, nothing partial is recorded."""

    def __enter__(self) -> None:
        self.old = None
        if hasattr(signal, "SIGTERM") and _in_main_thread():
            self.old = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _print_leaderboard(grid_dir: Path, out: TextIO) -> None:
    try:
        import leaderboards

        build = leaderboards.build
    except (ImportError, AttributeError):
        return  # leaderboards is optional for running; `gbmpo-bench leaderboard` needs it
    try:
        summary = build(grid_dir, out_dir=None)
    except Exception as e:  # a table problem must not turn a good run into a failure
        print(f"leaderboard not built ({type(e).__name__}: {e}); rebuild it with "
              f"`gbmpo-bench leaderboard {grid_dir}`", file=sys.stderr)
        return
    print(getattr(summary, "markdown", summary), file=out)


def default_workers(num_cpus: float) -> int:
    """As many cells as fit on this machine's cores at `num_cpus` each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, int((cores or 1) // max(num_cpus, 1.0)))


def cli(args: Any, command: CellCommand | None = None) -> int:
    """`gbmpo-bench run` with parsed arguments (see gbmpo/commands/run.py)."""
    command = command or DEFAULT_COMMAND
    try:
        path = resolve_grid(args.grid)
        grid = load_grid(path)
        if args.executor == "ray":
            executor: Any = RayExecutor(args.address, command, max_in_flight=args.workers)
        else:
            executor = LocalExecutor(args.workers or default_workers(grid.resources.num_cpus),
                                     command)
        return run_grid(path, executor, results_root=args.results, cell_filter=args.filter,
                        dry_run=args.dry_run, leaderboard=not args.no_leaderboard)
    except (ConfigError, FilterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
