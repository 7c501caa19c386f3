"""Shared behaviour of the code tasks: the reference solution is the completion, rewards come
from the sandbox through `gbmpo.verifiers.code`, the sandbox level is checked against the
task's `min_isolation` and reported, and records that take the in-process fallback are
declared and counted.

How a record is tested is its `sandbox.Suite`, built from the example: `tests`, and in
`meta` the optional `entry_points` (names the tests take from the program), `setup` (trusted
code the tests rely on, run in the evaluator) and `program_setup` (code that builds inputs
from the program's own classes, run in the program's process). A record listed in the task's
`IN_PROCESS` runs its tests inside the program's process instead (see docs/sandbox.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import sandbox
from gbmpo.tasks.base import Example, Score, Task
from gbmpo.verifiers import code as code_verifier

DEFAULT_MIN_ISOLATION = "landlock"
"""The first level at which a program can neither write outside its scratch directory nor
read outside the Python installation, whoever the caller is; below it a policy's programs
could rewrite the checkpoints or the reward code on disk. CI (root, Debian, bubblewrap
installed by .ci/run) reaches `namespaces`."""


class CodeTask(Task):
    """Base of tasks scored by running tests in the sandbox. Subclasses set `timeout_s`
    and call `_init_sandbox(min_isolation)` from their constructor."""

    kind: ClassVar[str] = "code"
    timeout_s: float = 10.0
    IN_PROCESS: ClassVar[Mapping[str, str]] = {}
    """record id -> why its tests need the program's own objects (the declared fallback)"""

    def _init_sandbox(self, min_isolation: str) -> None:
        try:
            self.min_isolation = sandbox.Isolation.parse(min_isolation)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: min_isolation: {e}") from None
        self.runs = 0
        self.in_process_runs = 0

    # ------------------------------------------------------------------ hooks
    def program(self, example: Example, code: str) -> str:
        """The program the sandbox runs for a completion's code (default: the code)."""
        return code

    def suite(self, example: Example) -> sandbox.Suite:
        meta = example.meta
        entry = meta.get("entry_points")
        return sandbox.Suite(tuple(example.tests),
                             entry_points=tuple(entry) if entry is not None else None,
                             setup=meta.get("setup", ""),
                             program_setup=meta.get("program_setup", ""),
                             in_process=example.id in self.IN_PROCESS)

    # ------------------------------------------------------------------ the contract
    def reference_completion(self, example: Example) -> str:
        return example.answer

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        extracted = [code_verifier.extract_code(c) for c in completions]
        programs = [self.program(ex, code) for ex, (code, _) in zip(examples, extracted,
                                                                     strict=True)]
        results = code_verifier.run_programs(programs, [self.suite(ex) for ex in examples],
                                             self.timeout_s, self._min_isolation(), self._who())
        self.runs += len(results)
        self.in_process_runs += sum(r.in_process for r in results)
        return code_verifier.scores_of(results, [code for code, _ in extracted],
                                       [step for _, step in extracted])

    def isolation(self) -> str | None:
        """The level code rewards run under; raises sandbox.IsolationError (what is missing
        and how to get it) when it is below `min_isolation`."""
        return code_verifier.isolation_level(self._min_isolation(), self._who())

    def sandbox_report(self) -> dict[str, Any]:
        """For a cell's provenance: the isolation level, the minimum required, the records
        that take the in-process fallback, and how many of the runs scored so far did."""
        return {"isolation": code_verifier.isolation_level(self._min_isolation(), self._who()),
                "min_isolation": self.min_isolation.name.lower(),
                "in_process_records": sorted(self.IN_PROCESS),
                "in_process_runs": self.in_process_runs, "runs": self.runs}

    def close(self) -> None:
        code_verifier.release_pool()

    def _min_isolation(self) -> sandbox.Isolation:
        return getattr(self, "min_isolation", sandbox.Isolation.parse(DEFAULT_MIN_ISOLATION))

    def _who(self) -> str:
        name = getattr(self, "registry_name", type(self).__name__)
        return (f"task {name!r} (min_isolation = {self._min_isolation().name.lower()!r}; "
                "to accept less, set min_isolation in [task.params], e.g. \"seccomp\")")
