"""The pool's side of job encoding: each test compiled once, each suite's entry points
worked out once (see `_job` for the format). Runs in the caller's process only: the worker
never imports it (nor `dis`, `threading` or `dataclasses`, which would make every process it
clones dearer)."""

from __future__ import annotations

import json
import marshal
import threading
from collections.abc import Sequence
from typing import Any

from sandbox import _wire
from sandbox._job import compile_item, items, program_payload
from sandbox._names import free_names
from sandbox._plan import static_plan
from sandbox.result import Limits, Suite


def evaluator_payload(names: Sequence[str], max_bytes: int, setup: bytes, plan: bytes,
                      tests: Sequence[bytes]) -> bytes:
    header = marshal.dumps({"names": list(names), "max_bytes": max_bytes})  # trusted both ends
    return items([header, setup, plan, *tests])


_PLAN_MISSES = 3  # a suite whose calls diverged from its plan this often in a row: no plan
_PLANS_BYTES = 32 << 20  # all plans kept, at most


class Compiler:
    """A pool's job encoder. Each test (and setup) is compiled once and keeps its id, so
    the evaluator loads it once; each suite's entry points are worked out once; and each
    suite's plan (the calls its tests made into the last program, see `_evaluator.Link`)
    is kept here, so that whichever worker runs the next sample of the same problem can
    send them ahead."""

    CACHE = 4096  # compiled items and suites kept

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], tuple[bytes, Any]] = {}
        self._names: dict[tuple[tuple[str, ...], str], tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._limit_dicts: dict[Limits, dict[str, Any]] = {}
        self._plans: dict[Suite, tuple[bytes, int]] = {}  # suite -> (plan, misses in a row)
        self._plan_bytes = 0

    def learn(self, suite: Suite, plan: bytes | None, diverged: bool) -> None:
        """What the evaluator reported after a run: a new plan, and whether the tests'
        calls diverged from the one it was given."""
        with self._lock:
            old, misses = self._plans.get(suite, (b"", 0))
            misses = misses + 1 if diverged else 0
            if plan is not None:
                if self._plan_bytes + len(plan) > _PLANS_BYTES:
                    self._plans.clear()
                    self._plan_bytes = 0
                    old = b""
                self._plan_bytes += len(plan) - len(old)
                old = plan
            self._plans[suite] = (old, misses)

    def plan(self, suite: Suite, names: Sequence[str]) -> bytes:
        """The calls the evaluator sends ahead: those the tests made last time, else those
        read from the tests (`_plan.static_plan`); none after repeated divergence."""
        got = self._plans.get(suite)
        if got is None:
            calls = static_plan(suite.tests, names)
            got = (b"".join(_wire.frame(c) for c in calls), 0)
            with self._lock:
                if len(self._plans) >= self.CACHE:
                    self._plans.clear()
                    self._plan_bytes = 0
                self._plans[suite] = got
                self._plan_bytes += len(got[0])
        return got[0] if got[1] < _PLAN_MISSES else b""

    def item(self, source: str, label: str) -> tuple[bytes, Any]:
        key = (source, label)
        got = self._items.get(key)
        if got is None:
            with self._lock:
                self._next += 1
                ident = self._next
            got = compile_item(source, label, ident)
            with self._lock:
                if len(self._items) >= self.CACHE:
                    self._items.clear()
                self._items[key] = got
        return got

    def _limits(self, limits: Limits) -> dict[str, Any]:
        got = self._limit_dicts.get(limits)
        if got is None:
            got = self._limit_dicts[limits] = {**limits.to_dict(),
                                               "cpu_limit_s": limits.cpu_limit_s}
        return got

    def entry_points(self, suite: Suite, setup_code: Any, codes: list[Any]) -> tuple[str, ...]:
        if suite.entry_points is not None:
            return suite.entry_points
        key = (suite.tests, suite.setup)
        names = self._names.get(key)
        if names is None:
            names = tuple(free_names([c for c in codes if c is not None],
                                     [setup_code] if setup_code is not None else []))
            with self._lock:
                if len(self._names) >= self.CACHE:
                    self._names.clear()
                self._names[key] = names
        return names

    def encode(self, program: str, suite: Suite, limits: Limits) -> tuple[bytes, bytes, bytes]:
        """(header JSON, program's part, evaluator's part) of one job."""
        compiled = [self.item(t, f"<test {i}>") for i, t in enumerate(suite.tests)]
        setup_item, setup_code = self.item(suite.setup, "<setup>") if suite.setup else (b"", None)
        tests = [c[0] for c in compiled]
        names = self.entry_points(suite, setup_code, [c[1] for c in compiled])
        header = {"limits": self._limits(limits), "n_tests": len(tests),
                  "mode": "in_process" if suite.in_process else "proxy"}
        program_part = program_payload(program, suite.program_setup, names, setup_item, tests,
                                       suite.in_process)
        evaluator_part = b"" if suite.in_process else evaluator_payload(
            names, limits.max_message_mb << 20, setup_item, self.plan(suite, names), tests)
        return json.dumps(header).encode(), program_part, evaluator_part
