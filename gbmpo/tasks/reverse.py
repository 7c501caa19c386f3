"""`reverse`: write a short lowercase word backwards. The embedded model's retention probe.

The tiny base is pretrained on this skill alongside `arith` (``pretrain.tasks``), and RL never
rewards it: scored after training as a transfer task (``eval.transfer``), its drop is the cell's
forgetting, in the sense of RL's Razor (Shenfeld et al., 2509.04259: forgetting tracks the
forward KL(pi_0 || pi) on the new task's distribution). Prompts start with ``Reverse:``, so they
are disjoint from arith's ``Q:`` prompts by construction; splits are disjoint by a hash of the
word, as in `arith`.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Sequence

from gbmpo.tasks.base import TASKS, Example, Score, Task

BUCKETS = {"test": range(0, 10), "validation": range(10, 20), "train": range(20, 100)}


@TASKS.register("reverse")
class Reverse(Task):
    """Reverse a lowercase word ('Reverse: abcd' -> 'dcba'); exact match. Retention probe."""

    kind = "text"
    version = "1"
    splits = ("train", "validation", "test")

    def __init__(self, min_len: int = 3, max_len: int = 6, n_train: int = 5000,
                 n_validation: int = 500, n_test: int = 500, data_seed: int = 4321) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"reverse needs 1 <= min_len <= max_len, got {min_len}, {max_len}")
        self.min_len, self.max_len = min_len, max_len
        self.sizes = {"train": n_train, "validation": n_validation, "test": n_test}
        self.data_seed = data_seed
        self._cache: dict[str, list[Example]] = {}

    def split(self, name: str) -> list[Example]:
        self._check_split(name)
        if name not in self._cache:
            rng = random.Random(self.data_seed * 1000 + self.splits.index(name))
            want, buckets = self.sizes[name], BUCKETS[name]
            seen: set[str] = set()
            out: list[Example] = []
            for _ in range(200 * want + 10000):
                if len(out) == want:
                    break
                word = "".join(rng.choices(string.ascii_lowercase,
                                           k=rng.randint(self.min_len, self.max_len)))
                digest = hashlib.sha1(word.encode()).hexdigest()
                if word in seen or int(digest[:8], 16) % 100 not in buckets:
                    continue
                seen.add(word)
                out.append(Example(id=f"reverse-{word}", question=word, answer=word[::-1]))
            if len(out) < want:
                raise ValueError(f"reverse cannot draw {want} distinct {name} words of length "
                                 f"{self.min_len}-{self.max_len}; lower n_{name} or widen them")
            self._cache[name] = out
        return self._cache[name]

    def build_prompt(self, example: Example, tokenizer=None) -> str:
        return f"Reverse: {example.question}\nA: "

    def reference_completion(self, example: Example) -> str:
        return example.answer

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Score]:
        out = []
        for ex, text in zip(examples, completions, strict=True):
            got = text.strip()
            ok = got == ex.answer
            out.append(Score(reward=float(ok), correct=ok, extracted=got, method="exact"))
        return out
