"""The Math-Verify fallback pool sizes itself to the cores this process may use, and its worker
processes start no thread pools of their own (no oversubscription)."""

from __future__ import annotations

import os
import sys

import pytest

from gbmpo.verifiers import math as mv

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="CPU affinity and /proc are Linux interfaces")


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 1), (4, 2), (6, 3), (64, 4)])
def test_default_pool_takes_half_the_usable_cores_at_most_four(monkeypatch, cores, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 128)  # the machine's count must not matter
    monkeypatch.setattr(mv, "_default", None)
    pool = mv.default_pool()
    try:
        assert pool.workers == workers
    finally:
        pool.close()
        monkeypatch.setattr(mv, "_default", None)


@linux_only
def test_workers_run_single_threaded_on_the_parents_cores():
    with mv.MathVerifyPool(workers=1) as pool:
        assert pool.check("1/2", "\\frac{2}{4}").correct  # starts the worker, imports sympy
        worker = pool._idle[0]
        pid = worker.proc.pid
        environ = dict(
            item.split("=", 1) for item in
            open(f"/proc/{pid}/environ", "rb").read().decode().split("\0") if "=" in item)
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            assert environ.get(key) == "1", key
        assert os.sched_getaffinity(pid) == os.sched_getaffinity(0)
        threads = len(os.listdir(f"/proc/{pid}/task"))
        assert threads == 1, f"the worker runs {threads} threads"
