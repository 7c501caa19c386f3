"""The task contract: examples per split, prompt building, and batch scoring.

A task owns its data and its verifier call. The trainer and evaluation see only `Example`,
`build_prompt` and `score`; they never branch on a task name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gbmpo.registry import Registry


@dataclass(frozen=True)
class Example:
    """One problem. `question` is the raw text; `build_prompt` turns it into model input."""

    id: str
    question: str
    answer: str  # gold final answer (math) or reference solution (code)
    tests: tuple[str, ...] = ()  # code tasks: Python statements, e.g. asserts
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """The verdict on one completion.

    `reward` is what RL optimises; `details` are extra 0/1 (or real) metrics that evaluation
    averages and reports next to accuracy, e.g. {"strict": 1.0, "flexible": 1.0}.
    `method` names the step that decided the verdict (e.g. "strict", "flexible", "sandbox").
    """

    reward: float
    correct: bool
    extracted: str | None = None
    method: str = ""
    details: Mapping[str, float] = field(default_factory=dict)


class Task(ABC):
    """Base class. Subclasses register with `@TASKS.register("name")`.

    Class attributes: `kind` ("math" or "code"), `version` (bump when data, prompt or scoring
    changes; written into every result), `splits` (the split names `split()` accepts).
    Constructor keyword arguments are the task's parameters, settable from `[task.params]`.
    """

    kind: ClassVar[str] = "math"
    version: ClassVar[str] = "0"
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")

    @abstractmethod
    def split(self, name: str) -> list[Example]:
        """All examples of a split, in a fixed order; unknown split -> ValueError."""

    def build_prompt(self, example: Example, tokenizer: Any = None) -> str:
        """Model input text for an example. Default: the question as is."""
        return example.question

    def reference_completion(self, example: Example) -> str:
        """The ideal completion (used for supervised pretraining of the tiny model and for
        sanity checks: scoring it must give reward 1). Tasks without one raise."""
        raise NotImplementedError(f"{type(self).__name__} has no reference completion")

    def demonstration(self, example: Example, rng: Any, slip_rate: float = 0.0) -> str:
        """A supervised-pretraining target. `slip_rate` is the chance that each step prone to
        the task's systematic error is written wrongly (`rng`: a `random.Random`). Default:
        the reference completion, for tasks with no modelled error."""
        return self.reference_completion(example)

    @abstractmethod
    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        """Score completions[i] against examples[i]. Must never raise on model output."""

    def isolation(self) -> str | None:
        """The sandbox isolation level rewards are computed under (None: no code is run)."""
        return None

    def sandbox_report(self) -> dict[str, Any]:
        """For code tasks: the sandbox level, the required minimum, and how many runs took the
        declared in-process fallback (recorded in each result's provenance); else empty."""
        return {}

    def close(self) -> None:
        """Release pools or worker processes. Safe to call more than once."""

    def _check_split(self, name: str) -> None:
        if name not in self.splits:
            raise ValueError(
                f"task {getattr(self, 'registry_name', type(self).__name__)!r} has no split "
                f"{name!r}; valid splits: {', '.join(self.splits)}"
            )


def read_jsonl(path, required: Sequence[str], what: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a bad line raises ValueError naming the file, the line number and
    the missing fields (`what` names the kind of row, e.g. "GSM8K")."""
    import json

    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}; "
                                 f"{what} rows need {', '.join(required)}")
            rows.append(row)
    return rows


TASKS: Registry[type[Task]] = Registry("task", "gbmpo.tasks")
