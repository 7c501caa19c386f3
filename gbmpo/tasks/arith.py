"""`arith`: procedurally generated multi-step word problems with a `#### n` answer line.

The embedded default's math task: short enough for a ~1M-parameter character-level model to
learn partly in minutes, with a chain of small calculations like GSM8K's. A problem is fixed
by (name, item, start, operations); its split is a hash of that key, so train, validation and
test are disjoint by construction, whatever the seeds and sizes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from gbmpo.tasks.base import TASKS, Example, Score, Task
from gbmpo.verifiers.math import score_math

NAMES = ["Ann", "Ben", "Cai", "Dee", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Lou", "Max"]
ITEMS = ["apples", "pens", "cards", "coins", "books", "shells", "stamps", "eggs"]
ADD = ["buys {n} more", "finds {n} more", "gets {n} more"]
SUB = ["gives away {n}", "loses {n}", "sells {n}"]
MUL = {2: "doubles them", 3: "triples them"}

# split buckets out of 100, by hash of the problem key
BUCKETS = {"test": range(0, 10), "validation": range(10, 20), "train": range(20, 100)}


@TASKS.register("arith")
class Arith(Task):
    """Synthetic multi-step word problems ('#### n' answers), disjoint splits by hash."""

    kind = "math"
    version = "1"
    splits = ("train", "validation", "test")

    def __init__(
        self,
        min_ops: int = 2,
        max_ops: int = 3,
        max_start: int = 20,
        max_operand: int = 9,
        n_train: int = 20000,
        n_validation: int = 500,
        n_test: int = 500,
        data_seed: int = 1234,
    ) -> None:
        if not 1 <= min_ops <= max_ops:
            raise ValueError(f"arith needs 1 <= min_ops <= max_ops, got {min_ops}, {max_ops}")
        self.min_ops, self.max_ops = min_ops, max_ops
        self.max_start, self.max_operand = max_start, max_operand
        self.sizes = {"train": n_train, "validation": n_validation, "test": n_test}
        self.data_seed = data_seed
        self._cache: dict[str, list[Example]] = {}

    # ---- generation --------------------------------------------------------------------
    def _draw(self, rng: random.Random) -> tuple:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        start = rng.randint(2, self.max_start)
        ops, value = [], start
        for _ in range(rng.randint(self.min_ops, self.max_ops)):
            kind = rng.choice("+-*" if value <= 30 else "+-")
            if kind == "*":
                n = rng.choice(list(MUL))
                value *= n
            elif kind == "-" and value > 1:
                n = rng.randint(1, min(self.max_operand, value - 1))
                value -= n
            else:
                kind, n = "+", rng.randint(1, self.max_operand)
                value += n
            ops.append((kind, n, rng.randrange(3)))
        return name, item, start, tuple(ops)

    @staticmethod
    def _bucket(key: tuple) -> int:
        return int(hashlib.sha1(repr(key).encode()).hexdigest()[:8], 16) % 100

    def _render(self, key: tuple) -> Example:
        name, item, start, ops = key
        sentences = [f"{name} has {start} {item}."]
        for kind, n, phrase in ops:
            if kind == "+":
                sentences.append(f"{name} {ADD[phrase].format(n=n)}.")
            elif kind == "-":
                sentences.append(f"{name} {SUB[phrase].format(n=n)}.")
            else:
                sentences.append(f"{name} {MUL[n]}.")
        question = " ".join(sentences) + f" How many {item} now?"
        steps = tuple((kind, n) for kind, n, _ in ops)
        solution, value = _solution(start, steps)
        key_id = hashlib.sha1(repr(key).encode()).hexdigest()[:10]
        return Example(id=f"arith-{key_id}", question=question, answer=str(value),
                       meta={"solution": solution, "start": start, "steps": steps})

    def split(self, name: str) -> list[Example]:
        self._check_split(name)
        if name not in self._cache:
            seed = self.data_seed * 1000 + self.splits.index(name)
            rng, want, buckets = random.Random(seed), self.sizes[name], BUCKETS[name]
            seen: set[tuple] = set()
            out: list[Example] = []
            attempts = 0
            while len(out) < want:
                attempts += 1
                if attempts > 200 * want + 10000:
                    raise ValueError(
                        f"arith cannot draw {want} distinct {name} problems with these "
                        f"parameters; lower n_{name} or widen max_start/max_operand"
                    )
                key = self._draw(rng)
                if key in seen or self._bucket(key) not in buckets:
                    continue
                seen.add(key)
                out.append(self._render(key))
            self._cache[name] = out
        return self._cache[name]

    # ---- prompting and scoring ---------------------------------------------------------
    def build_prompt(self, example: Example, tokenizer=None) -> str:
        return f"Q: {example.question}\nA: "

    def reference_completion(self, example: Example) -> str:
        return example.meta["solution"]

    def demonstration(self, example: Example, rng, slip_rate: float = 0.0) -> str:
        """The solution with the carry slip: each addition whose ones digits overflow is written
        without its carry (`17+5=12`) with probability `slip_rate`; later lines go on from the
        wrong value, so the final answer is wrong too. Pretraining on these gives the embedded
        base a systematic error that it also knows how to avoid (it has seen the carry done
        right), which is the situation RL with a verifiable reward is meant to fix."""
        if slip_rate <= 0:
            return self.reference_completion(example)
        return _solution(example.meta["start"], example.meta["steps"], slip_rate, rng)[0]

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        return [score_math(c, ex.answer) for ex, c in zip(examples, completions, strict=True)]


def _solution(start: int, steps, slip_rate: float = 0.0, rng=None) -> tuple[str, int]:
    """The worked solution (one `a<op>b=c` line per step, then `#### n`) and its final value;
    with `slip_rate` > 0, each carrying addition drops its carry with that probability."""
    lines, value = [], start
    for kind, n in steps:
        new = value + n if kind == "+" else value - n if kind == "-" else value * n
        if kind == "+" and slip_rate > 0 and value % 10 + n >= 10 and rng.random() < slip_rate:
            new -= 10
        lines.append(f"{value}{kind}{n}={new}")
        value = new
    return "\n".join(lines) + f"\n#### {value}", value
