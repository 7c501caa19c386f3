"""Isolation that holds wherever Python is installed, and code rewards that refuse to run
below the level a task requires."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sandbox
from sandbox import Check, Isolation, IsolationError, IsolationReport, Pool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tmp_venv(tmp_path_factory):
    """A virtual environment under /tmp, as in a scratch checkout or a CI clone."""
    if sandbox.detect().level < Isolation.NAMESPACES:
        pytest.skip("this machine does not reach the namespaces level (bubblewrap, Landlock)")
    # /tmp itself, not TMPDIR: bubblewrap mounts a fresh /tmp over exactly this directory
    where = Path("/tmp") / f"gbmpo-venv-{os.getpid()}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(where)], check=True, timeout=120)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_namespaces_level_from_a_venv_under_tmp(tmp_venv):
    python = tmp_venv / "bin" / "python"
    p = subprocess.run([str(python), "-m", "sandbox", "isolation"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("isolation level: namespaces"), p.stdout


def test_package_and_venv_both_under_tmp_run_programs(tmp_venv, tmp_path):
    shutil.copytree(ROOT / "sandbox", tmp_path / "sandbox",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sandbox, sandbox._bwrap as b\n"
            "print(b.interpreter_paths())\n"
            "r = sandbox.run('def f(x):\\n    return x + 1', ['assert f(1) == 2'])\n"
            "print(r.status.value, r.isolation)\n")
    p = subprocess.run([str(tmp_venv / "bin" / "python"), "-c", code], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    bound, verdict = p.stdout.splitlines()[-2:]
    assert str(tmp_path / "sandbox") in bound and str(tmp_venv) in bound
    assert verdict == "passed namespaces"


def _report(level: Isolation) -> IsolationReport:
    checks = {n: Check(n, True, "") for lvl in Isolation if lvl <= level
              for n in sandbox.result.LEVEL_FEATURES[lvl]}
    checks["landlock"] = Check("landlock", level >= Isolation.LANDLOCK, "no Landlock here")
    checks["namespaces"] = Check("namespaces", False, "bubblewrap (bwrap) is not installed")
    return IsolationReport(level, checks)


def test_a_level_out_of_reach_names_what_is_missing_and_how_to_get_it():
    rep = _report(Isolation.SECCOMP)
    rep.require(Isolation.SECCOMP)  # reached: no error
    with pytest.raises(IsolationError) as e:
        rep.require("namespaces", "task 'mbpp'")
    msg = str(e.value)
    assert "task 'mbpp' requires sandbox isolation namespaces, but here it is seccomp" in msg
    assert "landlock (landlock level): no Landlock here; to get it: Linux >= 5.13" in msg
    assert "apt-get install bubblewrap" in msg


def test_code_rewards_refuse_to_run_below_min_isolation(monkeypatch):
    from gbmpo.tasks import TASKS
    from gbmpo.verifiers import code as cv

    with pytest.raises(ValueError, match="min_isolation: unknown isolation level 'strict'"):
        TASKS.get("pycode")(min_isolation="strict")
    cv.release_pool()
    low = Pool(1, isolation="seccomp")
    monkeypatch.setattr(cv, "_pool", low)
    try:
        task = TASKS.get("pycode")(n_test=2)  # default minimum: landlock
        with pytest.raises(IsolationError, match=r"task 'pycode' \(min_isolation = 'landlock'"):
            task.isolation()
        with pytest.raises(IsolationError, match="to get it"):
            task.score(task.split("test"), ["def f(x):\n    return x"] * 2)
        relaxed = TASKS.get("pycode")(n_test=2, min_isolation="seccomp")
        assert relaxed.isolation() == "seccomp"
        assert relaxed.sandbox_report()["min_isolation"] == "seccomp"
    finally:
        cv.release_pool()


def test_default_worker_count_follows_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    with Pool(isolation="rlimits") as p:  # the cheapest level: this is about sizing
        assert p.n == 1 and p.cpus == [1]
        assert p.submit("x = 1", []).result().passed
