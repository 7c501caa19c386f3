"""The grid runner with a fake cell command (tests/fake_cell.py) standing in for the trainer:
skip finished, record failures and timeouts, resume, locks, interrupts, and SIGKILL of the
runner at random moments without orphans, duplicates or torn results."""

from __future__ import annotations

import fcntl
import io
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_cell import events, fake_command, make_grid

from bench.executors import PYTHON, CellCommand, LocalExecutor
from bench.grid import GridError
from bench.ray_executor import RayExecutor
from bench.runner import FilterError, resolve_grid, run_grid, select
from gbmpo.cli import main as cli_main

FAKE = Path(__file__).resolve().with_name("fake_cell.py")  # also holds the helpers below
REPO = FAKE.parent.parent
TIMING = ("wall_time_s", "step_time_s")


def run(tmp: Path, grid: Path, plan: dict | None = None, workers: int = 2, **kw) -> int:
    kw.setdefault("leaderboard", False)
    executor = LocalExecutor(workers, fake_command(tmp, plan), poll_s=0.02)
    return run_grid(grid, executor, results_root=tmp / "results", progress=False,
                    out=kw.pop("out", io.StringIO()), **kw)


def results(tmp: Path, grid: str = "fake") -> dict[str, dict]:
    root = tmp / "results" / grid
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/result.json")}


def test_runs_every_cell_then_skips_finished_ones(tmp_path):
    grid = make_grid(tmp_path)
    assert run(tmp_path, grid) == 0
    res = results(tmp_path)
    assert len(res) == 4
    for cell_id, r in res.items():
        assert r["status"] == "completed"
        assert (r["grid"], r["cell_id"]) == ("fake", cell_id)  # stamped by the runner
        cell_dir = tmp_path / "results" / "fake" / cell_id
        assert {"config.toml", "metrics.jsonl", "log.txt"} <= {p.name for p in cell_dir.iterdir()}
    manifest = json.loads((tmp_path / "results" / "fake" / "grid.json").read_text())
    assert sorted(c["cell_id"] for c in manifest["cells"]) == sorted(res)
    assert len(events(tmp_path, "pretrain")) == 1  # one distinct base model
    assert sorted(events(tmp_path, "complete")) == ["kl_k3:0", "kl_k3:1", "none:0", "none:1"]

    out = io.StringIO()
    assert run(tmp_path, grid, out=out) == 0
    assert "4 already finished, 0 to run" in out.getvalue()
    assert len(events(tmp_path, "start")) == 4 and len(events(tmp_path, "pretrain")) == 1


def test_failed_cell_is_recorded_with_reason_and_log_tail_then_rerun(tmp_path):
    grid = make_grid(tmp_path)
    assert run(tmp_path, grid, {"cells": {"kl_k3:1": {"mode": "crash"}}}) == 1
    res = {(r["divergence"], r["seed"]): r for r in results(tmp_path).values()}
    failed = res["kl_k3", 1]
    assert failed["status"] == "failed"
    assert failed["reason"] == "exited with code 3 (no result.json)"
    assert failed["returncode"] == 3 and failed["grid"] == "fake"
    tail = failed["log_tail"].splitlines()
    assert len(tail) == 40 and tail[-1] == "crash line 59" and tail[0] == "crash line 20"
    assert failed["cell_id"].startswith("arith__dr_grpo__kl_k3__b0__s1__")
    assert all(r["status"] == "completed" for k, r in res.items() if k != ("kl_k3", 1))

    # resume: only the failed cell runs again, and this time it succeeds
    assert run(tmp_path, grid) == 0
    assert events(tmp_path, "complete").count("kl_k3:1") == 1
    assert len(events(tmp_path, "start")) == 5
    assert all(r["status"] == "completed" for r in results(tmp_path).values())


def test_timeout_kills_the_cell_and_records_it(tmp_path):
    grid = make_grid(tmp_path, divergences=["none"], seeds=[0], timeout=1.5)
    t0 = time.monotonic()
    assert run(tmp_path, grid, {"cells": {"none:0": {"mode": "hang"}}}) == 1
    assert time.monotonic() - t0 < 15
    (r,) = results(tmp_path).values()
    assert r["status"] == "timeout"
    assert r["reason"] == "timed out after 1.5 s (resources.timeout_s)"
    assert "fake cell none:0 starting (hang)" in r["log_tail"]
    assert not _live_processes_mentioning(str(tmp_path))


@pytest.mark.parametrize("mode,status,reason,rc", [
    ("diverge", "diverged", None, 0),
    ("exit0", "failed", "exited with code 0 (no result.json)", 1),
    ("garbage", "failed", "exited with code 0 (result.json is unreadable", 1),
])
def test_outcomes_without_a_clean_result(tmp_path, mode, status, reason, rc):
    grid = make_grid(tmp_path, divergences=["none"], seeds=[0])
    assert run(tmp_path, grid, {"cells": {"none:0": {"mode": mode}}}) == rc
    (r,) = results(tmp_path).values()
    assert r["status"] == status
    assert (r["reason"] or "").startswith(reason or "")
    assert run(tmp_path, grid, {"cells": {"none:0": {"mode": mode}}}) == rc
    assert len(events(tmp_path, "start")) == (1 if status == "diverged" else 2)


def test_a_cell_locked_by_another_runner_is_not_run(tmp_path):
    grid = make_grid(tmp_path, divergences=["none"], seeds=[0, 1])
    cells = {c["seed"]: c["cell_id"] for c in _manifest_cells(tmp_path, grid)}
    cell_dir = tmp_path / "results" / "fake" / cells[0]
    cell_dir.mkdir(parents=True)
    with open(cell_dir / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = io.StringIO()
        assert run(tmp_path, grid, out=out) == 1
    assert events(tmp_path, "start") == ["none:1"]
    assert not (cell_dir / "result.json").exists()
    assert "1 busy" in out.getvalue()
    assert run(tmp_path, grid) == 0  # lock released: the cell runs now


def test_pretrain_runs_once_per_base_model_and_its_failure_stops_the_run(tmp_path):
    extra = "[overrides.seed.1]\npretrain.steps = 7\n"
    grid = make_grid(tmp_path, seeds=[0, 1], extra=extra)
    assert run(tmp_path, grid, {"pretrain": "crash"}) == 2
    assert len(events(tmp_path, "pretrain")) == 1 and not events(tmp_path, "start")
    assert not results(tmp_path)
    assert run(tmp_path, grid) == 0
    assert len(events(tmp_path, "pretrain")) == 1 + 2


def test_dry_run_prints_the_table_and_writes_nothing(tmp_path):
    grid = make_grid(tmp_path)
    assert run(tmp_path, grid, cell_filter="seed=0") == 0
    out = io.StringIO()
    assert run(tmp_path, grid, dry_run=True, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["cell_id", "task", "algorithm", "divergence", "base", "seed",
                                "status"]
    rows = {tuple(line.split()[3:]) for line in lines[1:5]}
    assert rows == {("none", "0", "0", "done"), ("kl_k3", "0", "0", "done"),
                    ("none", "0", "1", "todo"), ("kl_k3", "0", "1", "todo")}
    assert lines[-1] == "4 cells: 2 done, 2 to run"
    assert len(events(tmp_path, "start")) == 2


def _manifest_cells(tmp: Path, grid: Path) -> list[dict]:
    from bench.grid import expand, load_grid

    return [{"cell_id": c.cell_id, **c.axis_values()} for c in expand(load_grid(grid))]


@pytest.mark.parametrize("expr,chosen", [
    ("divergence=kl_k3,seed=1", {("kl_k3", 1)}),
    ("divergence!=none", {("kl_k3", 0), ("kl_k3", 1)}),
    ("seed=0|1,divergence=n*", {("none", 0), ("none", 1)}),
    ("*__s1__*", {("none", 1), ("kl_k3", 1)}),
    ("id=arith__dr_grpo__kl_k3__b0__s0__*", {("kl_k3", 0)}),
])
def test_filter_selects_cells(tmp_path, expr, chosen):
    from bench.grid import expand, load_grid

    cells = expand(load_grid(make_grid(tmp_path)))
    assert {(c.divergence, c.seed) for c in select(cells, expr)} == chosen


@pytest.mark.parametrize("expr,message", [
    ("algo=grpo", "unknown filter key 'algo'"),
    ("divergence=kl_k4", "no divergence matches 'kl_k4'; the grid has kl_k3, none"),
    ("divergence=", "empty pattern"),
    ("seed=0,,seed=1", "empty term"),
    ("seed=0,seed=1", "matches none of the 4 cells"),
])
def test_bad_filter_is_a_clear_error(tmp_path, expr, message):
    from bench.grid import expand, load_grid

    cells = expand(load_grid(make_grid(tmp_path)))
    with pytest.raises(FilterError, match=message):
        select(cells, expr)


def test_cli_resolves_grid_names_and_reports_errors(tmp_path, capsys):
    assert resolve_grid(None).name == "tiny.toml" and resolve_grid("smoke").name == "smoke.toml"
    with pytest.raises(GridError, match="no grid file 'nope'.*smoke"):
        resolve_grid("nope")
    assert cli_main(["run", "smoke", "--dry-run", "--results", str(tmp_path)]) == 0
    assert "4 cells: 0 done, 4 to run" in capsys.readouterr().out
    assert cli_main(["run", "smoke", "--filter", "seed=9", "--results", str(tmp_path)]) == 2
    assert "no seed matches '9'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_leaderboard_is_built_for_the_grid_and_its_failure_is_harmless(tmp_path, monkeypatch,
                                                                       capsys):
    import leaderboards

    calls = []

    class Summary:
        markdown = "| the | table |"

    def build(results_dir, out_dir=None):
        calls.append((Path(results_dir), out_dir))
        return Summary()

    monkeypatch.setitem(vars(leaderboards), "build", build)  # without loading the real one
    grid = make_grid(tmp_path, divergences=["none"], seeds=[0])
    out = io.StringIO()
    assert run(tmp_path, grid, leaderboard=True, out=out) == 0
    assert calls == [(tmp_path / "results" / "fake", None)]
    assert out.getvalue().rstrip().endswith("| the | table |")

    def broken(results_dir, out_dir=None):
        raise ValueError("no metrics")

    monkeypatch.setitem(vars(leaderboards), "build", broken)
    assert run(tmp_path, grid, leaderboard=True) == 0
    assert "leaderboard not built (ValueError: no metrics)" in capsys.readouterr().err


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    executor = RayExecutor(None, fake_command(tmp_path))
    assert run_grid(make_grid(tmp_path), executor, results_root=tmp_path / "results",
                    leaderboard=False, progress=False, out=io.StringIO()) == 2
    assert "pip install 'gbmpo-bench[ray]'" in capsys.readouterr().err
    assert not results(tmp_path) and not events(tmp_path, "start")


# ---- interrupts and SIGKILL ------------------------------------------------------------
def _wait_for_start(tmp: Path, alive: Callable[[], bool], before: int) -> bool:
    """Wait until a cell has started after `before` starts were logged (False: runner ended)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and alive():
        if len(events(tmp, "start")) > before:
            return True
        time.sleep(0.01)
    return False


def _live_processes_mentioning(marker: str) -> list[int]:
    """Pids (other than zombies) whose command line contains `marker`."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(d.name))
        except (OSError, IndexError):
            continue
    return found


def _no_orphans(marker: str, wait_s: float = 3.0) -> bool:
    deadline = time.monotonic() + wait_s
    while _live_processes_mentioning(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _strip_timing(obj):
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def _snapshot(results_dir: Path) -> dict[str, object]:
    """Per cell: result.json and metrics.jsonl without timing fields."""
    snap = {}
    for d in sorted(p for p in (results_dir / "fake").iterdir() if p.is_dir()):
        metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        snap[d.name] = _strip_timing({"result": json.loads((d / "result.json").read_text()),
                                      "metrics": metrics})
    return snap


def test_sigterm_stops_cleanly_and_leaves_no_partial_result(tmp_path):
    grid = make_grid(tmp_path, divergences=["none"], seeds=[0, 1])
    fake_command(tmp_path, {"duration": 30})
    proc = _forked_runner(tmp_path, grid)
    assert _wait_for_start(tmp_path, proc.is_alive, 0)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(30)
    assert proc.exitcode == 130
    assert _no_orphans(str(tmp_path))
    assert not results(tmp_path)  # interrupted cells are not failures: they simply rerun


def _forked_runner(tmp: Path, grid: Path) -> multiprocessing.Process:
    """The runner in a forked child: a real separate process, without paying the torch import
    of a fresh interpreter on every restart."""

    def target() -> None:
        executor = LocalExecutor(2, CellCommand(*_command_parts(tmp)), poll_s=0.02)
        sys.exit(run_grid(grid, executor, results_root=tmp / "results", leaderboard=False,
                          progress=False, out=io.StringIO()))

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=False)
    proc.start()
    return proc


def _command_parts(tmp: Path) -> tuple[tuple[str, ...], None]:
    head = (PYTHON, str(FAKE), "--plan", str(tmp / "plan.json"), "--ledger", str(tmp / "ledger"))
    return (*head, "train"), None


def test_sigkilled_runner_leaves_no_orphans_and_resumes_exactly_once(tmp_path):
    """SIGKILL only the runner at random moments; its cells must die with it (no orphan writes
    a result later), no result.json may ever be torn, and after resuming each cell has
    completed exactly once with content identical to an uninterrupted run."""
    seeds = [0, 1, 2, 3]
    grid = make_grid(tmp_path, divergences=["none", "kl_k3"], seeds=seeds)
    plan = {"cells": {f"{d}:{s}": {"duration": 0.3 + 0.08 * s} for d in ("none", "kl_k3")
                      for s in seeds}}
    ref = tmp_path / "ref"
    ref.mkdir()
    assert run(ref, grid, plan) == 0
    fake_command(tmp_path, plan)

    rng = random.Random(20240611)
    kills = 0
    for i in range(12):
        proc = _forked_runner(tmp_path, grid)
        if not _wait_for_start(tmp_path, proc.is_alive, len(events(tmp_path, "start"))):
            proc.join(60)
            assert proc.exitcode == 0
            break  # nothing left to start: the grid is complete
        # Alternate kills that let no fresh cell finish (< 0.3 s, the shortest cell) with kills
        # that may let the first pair finish but not the next (< 0.65 s): every kill lands on
        # a runner that still has work, however the timing falls.
        time.sleep(rng.uniform(0.0, 0.28) if i % 2 == 0 else rng.uniform(0.3, 0.65))
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.join(30)
        done_at_kill = len(events(tmp_path, "complete"))
        time.sleep(0.6)  # longer than any cell: an orphan would have finished by now
        assert not _live_processes_mentioning(str(tmp_path)), "a cell outlived its runner"
        assert len(events(tmp_path, "complete")) == done_at_kill, "an orphan finished a cell"
        for r in (tmp_path / "results").rglob("result.json"):
            assert json.loads(r.read_text())["status"] == "completed"  # never torn
        if kills >= 5 and i >= 5:
            break
    assert kills >= 5
    final = _forked_runner(tmp_path, grid)
    final.join(120)
    assert final.exitcode == 0

    completed = events(tmp_path, "complete")
    assert sorted(completed) == sorted(f"{d}:{s}" for d in ("none", "kl_k3") for s in seeds)
    assert _snapshot(tmp_path / "results") == _snapshot(ref / "results")


@pytest.mark.slow
def test_real_smoke_grid_through_the_cli(tmp_path):
    """The real trainer (`python -m gbmpo train`) on bench/grids/smoke.toml, 2 local workers."""
    cmd = [sys.executable, "-m", "gbmpo", "run", "smoke", "--workers", "2", "--results",
           str(tmp_path), "--no-leaderboard"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")])}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    res = {p.parent.name: json.loads(p.read_text())
           for p in (tmp_path / "smoke").glob("*/result.json")}
    assert len(res) == 4
    for cell_id, r in res.items():
        assert (r["status"], r["grid"], r["cell_id"]) == ("completed", "smoke", cell_id)
        assert 0.0 <= r["metrics"]["accuracy"]["value"] <= 1.0
        rows = (tmp_path / "smoke" / cell_id / "metrics.jsonl").read_text().splitlines()
        assert sum(json.loads(x)["kind"] == "train" for x in rows) == 2
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "4 already finished, 0 to run" in again.stdout
