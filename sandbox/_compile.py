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




class Compiler:
    """A pool's job encoder. Each test (and setup) is compiled once and keeps its id, so
    the evaluator loads it once; each suite's entry points and plan are worked out once."""

    CACHE = 4096  # compiled items and suites kept

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], tuple[bytes, Any]] = {}
        self._names: dict[tuple[tuple[str, ...], str], tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._limit_dicts: dict[Limits, dict[str, Any]] = {}
        self._plans: dict[Suite, bytes] = {}

    def plan(self, suite: Suite, names: Sequence[str]) -> bytes:
        """The calls the evaluator sends ahead (`_plan.static_plan`), framed; per suite."""
        got = self._plans.get(suite)
        if got is None:
            got = b"".join(_wire.frame(c) for c in static_plan(suite.tests, names))
            with self._lock:
                if len(self._plans) >= self.CACHE:
                    self._plans.clear()
                self._plans[suite] = got
        return got

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
