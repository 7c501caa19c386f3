"""The ES search for neural-mirror-map parameters (`gbmpo-bench es`, bench/es.py, gbmpo/search).

Pure strategy checks (a hand-computed GBMPO-ES update, convergence of both strategies on a
surrogate), the search machinery with a fake trainer standing in for `python -m gbmpo train`
(work sharing between processes, SIGKILL and resume, failed candidates), and one real search
through the CLI on the tiny default whose artifact then trains a `neural_mirror_es` cell.

Run as a script, this file is that fake trainer:
    python test_es.py --ledger L [--duration S] [--fail KEY] train --config C.toml --out DIR
It scores the candidate's parameter file with `surrogate` (deterministic) and honours the
trainer's contract (config.toml, metrics.jsonl, atomic result.json scored on validation).
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
HEAVY = (0, 100, 200, 378, 379)  # the surrogate cares about a few coordinates, like v, a, c


def surrogate(x: np.ndarray) -> float:
    """A quadratic in 380 dims: 1 at the optimum, ~0.05 at GBMPO's starting point."""
    w = np.full(380, 1e-3)
    w[list(HEAVY)] = 20.0
    target = np.zeros(380)
    target[list(HEAVY)] = 0.1
    return float(1.0 - np.sum(w * (np.asarray(x) - target) ** 2))


# ---- the pure strategy ---------------------------------------------------------------------
def test_gbmpo_es_matches_a_hand_computed_run_in_4_dims():
    from gbmpo.search.strategies import EsSettings, EsState, GbmpoEs, Generation

    es = GbmpoEs(EsSettings(population=4, sigma=0.5, sigma_decay=0.5, alpha=0.3, dim=4))
    s0 = EsState(0, np.zeros(4), -math.inf)
    assert es.ask(s0).eps.shape == (4, 4) and es.ask(s0).sigma == 0.5

    # generation 0: member 3 fails (scores 0, N_succ = 3); mean 0.325 > -inf: accept.
    # sum f_i eps_i = 0.6*e1 - 0.2*e1 + 0.5*e2 = (0.4, 0.5, 0.8, -0.5); alpha/(3*0.5) = 0.2
    g0 = Generation(0, 0.5, s0.phi, np.array(
        [[1, 0, 2, 0], [-1, 0, -2, 0], [0, 1, 0, -1], [0, -1, 0, 1]], float))
    s1 = es.tell(s0, g0, [0.6, 0.2, 0.5, 0.9], failed=[False, False, False, True])
    np.testing.assert_allclose(s1.phi, [0.08, 0.1, 0.16, -0.1], atol=1e-12)
    assert s1.best_fitness == pytest.approx(0.325) and s1.elites == ()

    # generation 1: sigma 0.25, mean 0.25 <= 0.325: reject, keep phi, carry the top two
    g1 = es.ask(s1)
    assert g1.sigma == 0.25 and len(g1.eps) == 4 and not g1.carried
    np.testing.assert_array_equal(g1.eps[0], -g1.eps[1])  # antithetic pairs
    g1 = Generation(1, 0.25, s1.phi, np.array(
        [[1, 1, 0, 0], [-1, -1, 0, 0], [0, 0, 1, 1], [0, 0, -1, -1]], float))
    np.testing.assert_allclose(g1.candidates[0], [0.33, 0.35, 0.16, -0.1], atol=1e-12)
    s2 = es.tell(s1, g1, [0.4, 0.1, 0.2, 0.3])
    np.testing.assert_array_equal(s2.phi, s1.phi)
    assert [m.fitness for m in s2.elites] == [0.4, 0.3]
    np.testing.assert_array_equal(s2.elites[1].eps, [0, 0, -1, -1])

    # generation 2: sigma 0.125; 2 carried + 2 fresh; f = (0.4, 0.3, 0.9, 0.5), mean 0.525:
    # accept. sum f eps = (0.4, 1.2, -0.3, -0.3); alpha/(4*0.125) = 0.6
    g2 = es.ask(s2)
    assert g2.sigma == 0.125 and len(g2.eps) == 2 and len(g2.carried) == 2
    g2 = Generation(2, 0.125, s2.phi, np.array([[0, 2, 0, 0], [0, -2, 0, 0]], float), s2.elites)
    s3 = es.tell(s2, g2, [0.9, 0.5])
    np.testing.assert_allclose(s3.phi, [0.32, 0.82, -0.02, -0.28], atol=1e-12)
    assert s3.best_fitness == pytest.approx(0.525) and s3.elites == ()
    assert [r["accepted"] for r in s3.history] == [True, False, True]
    assert [r["mean"] for r in s3.history] == pytest.approx([0.325, 0.25, 0.525])
    with pytest.raises(ValueError, match="even"):
        EsSettings(population=5)


@pytest.mark.parametrize("strategy", ["gbmpo-es", "cmaes"])
def test_both_strategies_improve_a_noisy_quadratic_in_380_dims(strategy):
    if strategy == "cmaes":
        pytest.importorskip("cmaes", reason="Optuna's CmaEsSampler needs: pip install cmaes")
    from gbmpo.search.driver import FunctionEvaluator, Search
    from gbmpo.search.strategies import EsSettings
    from gbmpo.search.study import SearchSpec, open_storage, open_study

    noise = np.random.default_rng(0)
    spec = SearchSpec(strategy, 5, EsSettings(population=10))  # published sigma, alpha
    study = open_study(open_storage(":memory:", None), "surrogate", spec)
    search = Search(study, spec, batch=10, poll_s=0.01, out=io.StringIO())
    search.run(FunctionEvaluator(lambda x: surrogate(x) + 0.01 * noise.standard_normal()))
    rows = search.history()
    assert len(rows) == 5 and len(study.trials) == sum(r["evaluated"] for r in rows)
    assert rows[0]["mean"] < 0.1  # the start is poor ...
    assert rows[-1]["mean"] > rows[0]["mean"] + 0.3  # ... and five generations fix much of it
    if strategy == "gbmpo-es":
        phi, _ = search.result_params()
        assert surrogate(phi) > 0.8


def test_a_changed_setting_refuses_to_resume_the_study(tmp_path):
    from gbmpo.search.strategies import EsSettings
    from gbmpo.search.study import SearchError, SearchSpec, open_storage, open_study

    storage = str(tmp_path / "s.journal")
    open_study(open_storage(storage, None), "x", SearchSpec("gbmpo-es", 2, EsSettings(4)))
    with pytest.raises(SearchError, match="population: stored 4, now 6"):
        open_study(open_storage(storage, None), "x", SearchSpec("gbmpo-es", 2, EsSettings(6)))
    open_study(open_storage(storage, None), "x", SearchSpec("gbmpo-es", 5, EsSettings(4)))


# ---- cells, checks and the divergence ------------------------------------------------------
def test_validation_overlapping_train_or_test_stops_the_search(monkeypatch):
    from bench.es import SearchError, cell_base, check_splits
    from gbmpo.tasks import TASKS, Example

    cfg = cell_base("arith", "dr_grpo", 2, 0, [])
    sizes = check_splits(cfg)
    assert sizes == {"train": 20000, "validation": 500, "test": 500}

    class Leaky:
        splits = ("train", "validation", "test")

        def __init__(self, **kw):
            pass

        def split(self, name):
            ids = {"train": ["a", "b"], "validation": ["c", "d"], "test": ["d", "e"]}[name]
            return [Example(i, "q", "1") for i in ids]

        def close(self):
            pass

    monkeypatch.setattr(TASKS, "get", lambda name: Leaky)
    with pytest.raises(SearchError, match="1 validation examples also occur in test"):
        check_splits(cfg)
    with pytest.raises(SearchError, match="eval.split is set by the search"):
        cell_base("arith", "dr_grpo", 2, 0, ["eval.split=test"])


def test_neural_mirror_es_needs_a_search_artifact(tmp_path):
    from gbmpo.divergences import DIVERGENCES
    from gbmpo.divergences.neural_mirror import random_params, save_params

    cls = DIVERGENCES.get("neural_mirror_es")
    with pytest.raises(ValueError, match="needs divergence.params.params_path"):
        cls()
    save_params(tmp_path / "plain.json", random_params(0))
    with pytest.raises(ValueError, match="not an ES search artifact"):
        cls(params_path=str(tmp_path / "plain.json"))


# ---- the search with a fake trainer --------------------------------------------------------
def fake_command(tmp: Path, duration: float = 0.2, fail: str = ""):
    from bench.executors import PYTHON, CellCommand

    head = (PYTHON, str(HERE), "--ledger", str(tmp / "ledger"), "--duration", str(duration))
    return CellCommand(train=(*head, *(("--fail", fail) if fail else ()), "train"), pretrain=None)


def ledger(tmp: Path, event: str) -> list[str]:
    path = tmp / "ledger"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [r["key"] for r in rows if r["event"] == event]


def search_in(tmp: Path, out: Path, *, population=4, generations=2, workers=2, storage=None,
              duration=0.2, fail="", strategy="gbmpo-es", executor=None, seeds=None):
    """run_search with real cells (LocalExecutor) of the fake trainer; returns the Search."""
    from bench.es import CellEvaluator, cell_base, run_search
    from bench.executors import LocalExecutor
    from bench.grid import Resources
    from gbmpo.search.strategies import EsSettings
    from gbmpo.search.study import SearchSpec

    base = cell_base("arith", "dr_grpo", 2, 0, ["eval.n=4"])
    command = fake_command(tmp, duration, fail)
    if executor == "ray":
        from bench.ray_executor import RayExecutor

        run = RayExecutor(None, command, max_in_flight=workers)
    else:
        run = LocalExecutor(workers, command, poll_s=0.02)
    ev = CellEvaluator(out, base, run, Resources(timeout_s=60), "fake", seeds=seeds)
    spec = SearchSpec(strategy, generations, EsSettings(population=population))
    return run_search(spec=spec, study_name="fake", search_dir=out, evaluator=ev, batch=workers,
                      storage_spec=storage, cell_config=base.to_dict(), poll_s=0.05,
                      out=io.StringIO())


def spawned(target, *args, **kw) -> multiprocessing.Process:
    """A fresh interpreter: forking a process whose torch already ran ops can hang the child."""
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args, kwargs=kw)
    proc.start()
    return proc


def slots(out: Path, storage: str | None = None) -> dict[str, tuple[list, float, bool]]:
    """key -> (params, fitness, failed) of every COMPLETE candidate of the study."""
    import optuna

    from gbmpo.search.study import PARAM_NAMES, open_storage

    study = optuna.load_study(study_name="fake", storage=open_storage(storage, out))
    return {t.user_attrs["es_key"]: ([t.params[p] for p in PARAM_NAMES], t.value,
                                     t.user_attrs["es_failed"])
            for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}


@pytest.mark.parametrize("shared_dir", [True, False], ids=["one-search-dir", "two-machines"])
def test_two_processes_share_the_work_and_run_no_candidate_twice(tmp_path, shared_dir):
    storage = None if shared_dir else str(tmp_path / "shared.journal")
    outs = [tmp_path / "es"] * 2 if shared_dir else [tmp_path / "a", tmp_path / "b"]
    procs = [spawned(search_in, tmp_path, out, workers=1, storage=storage, duration=0.4)
             for out in outs]
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    done = slots(outs[0], storage)
    started = ledger(tmp_path, "start")
    assert sorted(started) == sorted(done)  # every candidate ran, and exactly once
    assert len(done) >= 6  # generation 0 (4) + generation 1 (4 fresh, or 2 beside 2 elites)
    pids = {json.loads(x)["ppid"] for x in (tmp_path / "ledger").read_text().splitlines()}
    assert len(pids) == 2  # both processes ran candidates
    for out in set(outs):
        assert (out / "best_params.json").is_file()
    a = json.loads((outs[0] / "best_params.json").read_text())
    b = json.loads((outs[1] / "best_params.json").read_text())
    assert a["params"] == b["params"] and a["provenance"]["generation"] == 2


def test_sigkill_mid_generation_then_resume_gives_the_uninterrupted_study(tmp_path):
    ref_tmp, run_tmp = tmp_path / "ref", tmp_path / "run"
    ref_tmp.mkdir()
    run_tmp.mkdir()
    search_in(ref_tmp, ref_tmp / "es")
    reference = slots(ref_tmp / "es")

    out = run_tmp / "es"
    kills = []  # (candidates finished before the kill, ledger position of the kill)
    for need in (2, 6):  # kill with cells running, twice
        proc = spawned(search_in, run_tmp, out, duration=0.5)
        deadline = time.monotonic() + 90
        while len(ledger(run_tmp, "start")) < need and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # mid-cell: the started ones are still running
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        finished_before = set(ledger(run_tmp, "complete"))
        time.sleep(0.8)  # longer than a cell: an orphan would have finished by now
        assert set(ledger(run_tmp, "complete")) == finished_before, "a cell outlived its search"
        kills.append((finished_before, len(ledger(run_tmp, "start"))))
    search = search_in(run_tmp, out)
    starts = ledger(run_tmp, "start")
    for finished_before, position in kills:  # what had finished was read back, not rerun
        assert not finished_before & set(starts[position:])
    assert slots(out) == reference  # same candidates, parameters and fitnesses
    complete = ledger(run_tmp, "complete")
    assert sorted(set(complete)) == sorted(reference) and len(complete) == len(reference)
    ref_art = json.loads((ref_tmp / "es" / "best_params.json").read_text())
    art = json.loads((out / "best_params.json").read_text())
    assert art["params"] == ref_art["params"]
    assert art["provenance"]["fitness_history"] == ref_art["provenance"]["fitness_history"]
    abandoned = [t for t in search.study.trials if t.state.name == "FAIL"]
    assert abandoned and all("abandoned" in t.user_attrs["es_reason"] for t in abandoned)


def test_a_crashed_candidate_scores_zero_and_keeps_its_reason(tmp_path):
    search = search_in(tmp_path, tmp_path / "es", generations=1, fail="g000-c01")
    done = slots(tmp_path / "es")
    assert done["g000-c01"][1:] == (0.0, True)
    trial = next(t for t in search.study.trials if t.user_attrs.get("es_key") == "g000-c01")
    assert "failed: exited with code 3" in trial.user_attrs["es_reason"]
    assert [k for k in done if done[k][2]] == ["g000-c01"]
    rows = (tmp_path / "es" / "fitness_history.csv").read_text().splitlines()
    assert rows[0].startswith("generation,") and len(rows) == 2
    assert (tmp_path / "es" / "convergence.png").stat().st_size > 1000


def test_several_rl_seeds_per_candidate_give_the_fitness_noise(tmp_path):
    search = search_in(tmp_path, tmp_path / "es", generations=1, seeds=[0, 1])
    started = ledger(tmp_path, "start")
    assert len(started) == 8 and len(set(started)) == 4  # 4 candidates x 2 paired seeds
    for t in search.study.get_trials():
        values = t.user_attrs["seed_fitness"]
        assert values[1] - values[0] == pytest.approx(0.01) and t.user_attrs["seeds"] == [0, 1]
        assert t.value == pytest.approx(np.mean(values))
    (row,) = search.history()
    assert row["noise_se"] == pytest.approx(0.005)  # sd of (v, v + 0.01) / sqrt(2 seeds)
    assert row["spread_sd"] > 0
    header = (tmp_path / "es" / "fitness_history.csv").read_text().splitlines()[0]
    assert "noise_se" in header and "spread_sd" in header
    # resumed with the cells in place: read back, nothing retrained
    search_in(tmp_path, tmp_path / "es", generations=1, seeds=[0, 1])
    assert len(ledger(tmp_path, "start")) == 8


def test_a_search_directory_moved_elsewhere_continues_without_rerunning(tmp_path):
    import shutil

    search_in(tmp_path, tmp_path / "here" / "es", generations=1)
    assert len(ledger(tmp_path, "start")) == 4
    shutil.copytree(tmp_path / "here" / "es", tmp_path / "a" / "clone" / "es")
    search_in(tmp_path, tmp_path / "a" / "clone" / "es", generations=2)  # one more generation
    starts = ledger(tmp_path, "start")
    assert len(starts) == 8 and not set(starts[4:]) & set(starts[:4])  # only the new ones ran


def test_cmaes_through_cells_spends_its_budget_and_writes_the_best_candidate(tmp_path):
    pytest.importorskip("cmaes", reason="Optuna's CmaEsSampler needs: pip install cmaes")
    # in memory: a journal costs ~2 s per cmaes ask (380 parameters, one fsynced line each)
    search = search_in(tmp_path, tmp_path / "es", strategy="cmaes", storage=":memory:")
    done = {t.user_attrs["es_key"]: t for t in search.study.trials}
    assert sorted(done) == [f"t{i:05d}" for i in range(8)]
    assert all(t.state.name == "COMPLETE" for t in done.values())
    assert sorted(ledger(tmp_path, "start")) == sorted(done)
    best = max(done.values(), key=lambda t: t.value)
    art = json.loads((tmp_path / "es" / "best_params.json").read_text())
    assert art["params"] == list(best.params.values()) and art["provenance"]["strategy"] == "cmaes"
    assert all(abs(x) <= 1 for x in art["params"])  # FloatDistribution(-1, 1)
    assert [r["generation"] for r in search.history()] == [0, 1]


@pytest.mark.ray
def test_ray_executor_runs_the_same_search(tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    search_in(tmp_path / "local", tmp_path / "local" / "es")
    search_in(tmp_path / "ray", tmp_path / "ray" / "es", executor="ray", workers=4)
    assert slots(tmp_path / "ray" / "es") == slots(tmp_path / "local" / "es")


# ---- a real search through the CLI ---------------------------------------------------------
TINY = ["--set", "eval.n=10", "--set", "pretrain.steps=3", "--set", "pretrain.batch_size=8",
        "--set", "rollout.prompts_per_step=2", "--set", "rollout.samples_per_prompt=4",
        "--set", "rollout.max_new_tokens=16"]


def test_real_search_through_the_cli_then_a_neural_mirror_es_cell(tmp_path):
    from gbmpo import config as C
    from gbmpo.trainer import train

    out = tmp_path / "es"
    cmd = [sys.executable, "-m", "gbmpo", "es", "--population", "4", "--generations", "2",
           "--steps", "2", "--workers", "2", "--out", str(out), *TINY]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "artifact:" in proc.stdout
    artifact = out / "best_params.json"
    prov = json.loads(artifact.read_text())["provenance"]
    assert (prov["strategy"], prov["generation"], prov["study"]) == (
        "gbmpo-es", 2, "arith__dr_grpo__gbmpo-es__s0")
    assert len(prov["fitness_history"]) == 2
    results = sorted(out.glob("cells/*/result.json"))
    assert len(results) >= 6  # 4 + (4, or 2 beside 2 carried elites)
    for r in map(json.loads, map(Path.read_text, results)):
        assert r["eval"]["split"] == "validation" and r["divergence"] == "neural_mirror"
        # each cell carries its candidate's values, names no local directory, and labels them
        # with the candidate file's path inside the search directory
        params = r["config"]["divergence"]["params"]
        assert str(tmp_path) not in json.dumps(r["config"])
        assert params["params"] == json.loads((out / params["source"]).read_text())["params"]
        assert r["divergence_info"]["params_source"] == f"inline ({params['source']})"
    assert (out / "convergence.png").is_file() and (out / "fitness_history.csv").is_file()


    cfg = C.from_dict({"pretrain": {"steps": 3, "batch_size": 8}, "run": {"steps": 1},
                       "eval": {"n": 4}, "divergence": {"name": "neural_mirror_es", "beta": 1e-4,
                                                        "params": {"params_path": str(artifact)}},
                       "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4,
                                   "max_new_tokens": 16}})
    with warnings.catch_warnings():  # GBMPO's Gaussian start leaves the convex region
        warnings.simplefilter("ignore", UserWarning)
        result = train(cfg, tmp_path / "cell", progress=False)
    assert result["status"] == "completed"
    info = result["divergence_info"]
    assert info["search"]["study"] == "arith__dr_grpo__gbmpo-es__s0"
    assert info["params_source"] == str(artifact) and len(info["params_sha256"]) == 64


# ---- the fake trainer ----------------------------------------------------------------------
def _ledger_append(path: str, event: str, key: str) -> None:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps({"event": event, "key": key, "pid": os.getpid(),
                            "ppid": os.getppid()}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def fake_train(argv: list[str]) -> int:
    import argparse

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    ap = argparse.ArgumentParser()
    ap.add_argument("--ledger", required=True)
    ap.add_argument("--duration", type=float, default=0.2)
    ap.add_argument("--fail", default="")
    ap.add_argument("command", choices=("train",))
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    text = Path(args.config).read_text()
    cfg = tomllib.loads(text)
    params = cfg["divergence"]["params"]
    key = Path(params["source"]).stem.rsplit("-", 1)[0]  # <key>-<digest of the parameters>
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(text)
    _ledger_append(args.ledger, "start", key)
    time.sleep(args.duration)
    if key == args.fail:
        print("the fake trainer was told to crash", file=sys.stderr)
        return 3
    # the RL seed moves fitness a little, as it does in real training (seed 0: none)
    value = surrogate(np.array(params["params"])) + 0.01 * cfg["run"]["seed"]
    (out / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 0}) + "\n")
    result = {"schema_version": 1, "cell_id": out.name, "grid": None, "task": "arith",
              "algorithm": cfg["algorithm"]["name"], "divergence": cfg["divergence"]["name"],
              "seed": cfg["run"]["seed"], "status": "completed", "reason": None,
              "diverged_step": None, "metrics": {"accuracy": {"value": value, "direction": "max"}},
              "eval": {"split": cfg["eval"]["split"], "n": cfg["eval"]["n"], "greedy": True},
              "wall_time_s": args.duration, "versions": {"schema": 1}, "provenance": {},
              "config": cfg}
    tmp = out / ".result.json.tmp"
    tmp.write_text(json.dumps(result))
    _ledger_append(args.ledger, "complete", key)
    os.replace(tmp, out / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(fake_train(sys.argv[1:]))
