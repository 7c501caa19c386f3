"""`pycode`: procedurally generated one-line function-writing tasks, checked by the sandbox.

The embedded default's code task: small enough for a ~1M-parameter character-level model to
learn partly in minutes. A problem is a template family plus its constants, e.g.
"# f(x): return x times 3 plus 2" -> "def f(x):\\n    return x*3+2"; tests are asserts on a
few seeded inputs. The problem space is enumerated, and each problem's split is a hash of its
key, so train, validation and test are disjoint by construction, whatever the seed. Prompts
and completions are printable ASCII plus newline, completions under 60 characters.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gbmpo.tasks._code import DEFAULT_MIN_ISOLATION, CodeTask
from gbmpo.tasks.base import TASKS, Example
from gbmpo.verifiers import code as code_verifier


@dataclass(frozen=True)
class Family:
    """One template: `text` and `body` are formatted with the constants `k` (and `m`)."""

    name: str
    arg: str  # the signature's arguments: "x", "a, b", "xs" or "s"
    text: str  # English, after "return "
    body: str  # Python expression
    ks: Sequence[int] = (0,)
    ms: Sequence[int] = (0,)


_SMALL = range(2, 10)
_OFFSET = range(1, 61)
FAMILIES = [
    Family("mul_add", "x", "x times {k} plus {m}", "x*{k}+{m}", _SMALL, _OFFSET),
    Family("mul_sub", "x", "x times {k} minus {m}", "x*{k}-{m}", _SMALL, _OFFSET),
    Family("add_mul", "x", "x plus {m}, times {k}", "(x+{m})*{k}", _SMALL, _OFFSET),
    Family("square_add", "x", "x squared plus {m}", "x*x+{m}", (0,), range(0, 31)),
    Family("power", "x", "x to the power {k}", "x**{k}", range(2, 6)),
    Family("mod", "x", "x modulo {k}", "x%{k}", range(2, 13)),
    Family("floordiv", "x", "x divided by {k}, rounded down", "x//{k}", range(2, 13)),
    Family("divisible", "x", "whether x is divisible by {k}", "x%{k}==0", range(2, 13)),
    Family("clip_above", "x", "x if x is greater than {k}, else {m}", "x if x>{k} else {m}",
           range(0, 21), range(0, 10)),
    Family("clip_below", "x", "x if x is less than {k}, else {m}", "x if x<{k} else {m}",
           range(0, 21), range(0, 10)),
    Family("sum_add", "a, b", "a plus b plus {m}", "a+b+{m}", (0,), _OFFSET),
    Family("prod_add", "a, b", "a times b plus {m}", "a*b+{m}", (0,), _OFFSET),
    Family("diff_add", "a, b", "a minus b plus {m}", "a-b+{m}", (0,), _OFFSET),
    Family("scale_a", "a, b", "a times {k} plus b", "a*{k}+b", _SMALL),
    Family("scale_b", "a, b", "a plus b times {k}", "a+b*{k}", _SMALL),
    Family("max_add", "a, b", "the larger of a and b, plus {m}", "max(a,b)+{m}", (0,), _OFFSET),
    Family("min_add", "a, b", "the smaller of a and b, plus {m}", "min(a,b)+{m}", (0,), _OFFSET),
    Family("list_sum", "xs", "the sum of xs plus {m}", "sum(xs)+{m}", (0,), _OFFSET),
    Family("list_max", "xs", "the largest item of xs plus {m}", "max(xs)+{m}", (0,), _OFFSET),
    Family("list_min", "xs", "the smallest item of xs plus {m}", "min(xs)+{m}", (0,), _OFFSET),
    Family("list_len", "xs", "the length of xs times {k}", "len(xs)*{k}", _SMALL),
    Family("list_rev", "xs", "the last {k} items of xs, reversed", "xs[::-1][:{k}]",
           range(1, 6)),
    Family("list_sorted", "xs", "the {k} smallest items of xs, sorted", "sorted(xs)[:{k}]",
           range(1, 6)),
    Family("list_first", "xs", "the first {k} items of xs", "xs[:{k}]", range(1, 6)),
    Family("list_gt", "xs", "the items of xs greater than {k}", "[v for v in xs if v>{k}]",
           range(0, 21)),
    Family("list_mul", "xs", "each item of xs times {k}", "[v*{k} for v in xs]", _SMALL),
    Family("list_add", "xs", "each item of xs plus {m}", "[v+{m} for v in xs]", (0,), _OFFSET),
    Family("list_count", "xs", "how many items of xs equal {k}", "xs.count({k})", range(0, 10)),
    Family("list_sum_gt", "xs", "the sum of the items of xs greater than {k}",
           "sum(v for v in xs if v>{k})", range(0, 21)),
    Family("str_upper", "s", "the first {k} characters of s in upper case", "s[:{k}].upper()",
           range(1, 10)),
    Family("str_rev", "s", "the last {k} characters of s, reversed", "s[::-1][:{k}]",
           range(1, 10)),
    Family("str_repeat", "s", "s repeated {k} times", "s*{k}", range(2, 6)),
    Family("str_head", "s", "the first {k} characters of s", "s[:{k}]", range(1, 10)),
    Family("str_tail", "s", "the last {k} characters of s", "s[-{k}:]", range(1, 10)),
    Family("str_count", "s", "how many times '{c}' occurs in s", "s.count('{c}')", range(0, 14)),
    Family("str_len_add", "s", "the length of s plus {m}", "len(s)+{m}", (0,), _OFFSET),
]
_BY_NAME = {f.name: f for f in FAMILIES}
BUCKETS = {"test": range(0, 10), "validation": range(10, 20), "train": range(20, 100)}
_LETTERS = "abcdehlmnoprst"
_WORDS = ["cat", "dog", "tree", "moon", "abc", "hello", "data", "apple", "sky", "", "banana",
          "code", "level", "pass", "mat", "net"]


def _fmt(template: str, k: int, m: int) -> str:
    return template.format(k=k, m=m, c=_LETTERS[k % len(_LETTERS)])


def _inputs(fam: Family, k: int, rng: random.Random) -> list[tuple]:
    """Four distinct argument tuples. Numbers near the constant k are favoured so that the
    asserts tell k from k+1 (thresholds); lists are never empty (max/min need an item)."""

    def num() -> int:
        return rng.choice([rng.randint(-20, 40), rng.randint(-20, 40), k - 1, k, k + 1])

    out: list[tuple] = []
    while len(out) < 4:
        if fam.arg == "x":
            args: tuple = (num(),)
        elif fam.arg == "a, b":
            args = (num(), num())
        elif fam.arg == "xs":
            args = ([abs(num()) % 21 for _ in range(rng.randint(1, 7))],)
        else:
            word = rng.choice(_WORDS) + "".join(rng.choice(_LETTERS)
                                                for _ in range(rng.randint(0, 6)))
            args = (word,)
        if args not in out:
            out.append(args)
    return out


@functools.cache
def _evaluate(fam: Family, k: int, m: int) -> Callable[..., Any]:
    # The reference is our own fixed template, never model output: evaluating it here is
    # how the expected values in the asserts are computed.
    return eval(f"lambda {fam.arg}: {_fmt(fam.body, k, m)}")


def _siblings(fam: Family, k: int, m: int) -> list[tuple[int, int]]:
    """Problems of the same family that differ in one constant: the tests must fail them."""
    return [(k2, m) for k2 in fam.ks if k2 != k] + [(k, m2) for m2 in fam.ms if m2 != m]


def _discriminating_inputs(fam: Family, k: int, m: int, rng: random.Random) -> list[tuple]:
    """Inputs on which the reference differs from every sibling (up to 100 draws)."""
    ref = _evaluate(fam, k, m)
    others = [_evaluate(fam, k2, m2) for k2, m2 in _siblings(fam, k, m)]
    for _ in range(100):
        inputs = _inputs(fam, k, rng)
        want = [ref(*a) for a in inputs]
        if all(any(o(*a) != w for a, w in zip(inputs, want, strict=True)) for o in others):
            break
    return inputs


@TASKS.register("pycode")
class PyCode(CodeTask):
    """Synthetic one-line Python functions with assert tests (sandboxed), disjoint splits."""

    version = f"1+verifier{code_verifier.VERSION}"
    splits = ("train", "validation", "test")

    def __init__(self, n_train: int | None = None, n_validation: int = 200,
                 n_test: int = 200, data_seed: int = 1234, timeout_s: float = 5.0,
                 families: Sequence[str] | None = None,
                 min_isolation: str = DEFAULT_MIN_ISOLATION) -> None:
        """n_*: examples per split (None: every problem of that split; the problem space holds
        about 2,700). data_seed: order of examples and the test inputs. timeout_s: sandbox
        wall-clock limit per program. families: restrict to these template families.
        min_isolation: the lowest sandbox level code rewards may run under (rlimits, seccomp,
        landlock, namespaces); below it scoring raises, naming what is missing."""
        names = list(families) if families is not None else [f.name for f in FAMILIES]
        unknown = [n for n in names if n not in _BY_NAME]
        if unknown:
            raise ValueError(f"unknown pycode families {unknown}; valid: {', '.join(_BY_NAME)}")
        self.families = [_BY_NAME[n] for n in names]
        self.sizes = {"train": n_train, "validation": n_validation, "test": n_test}
        self.data_seed, self.timeout_s = data_seed, timeout_s
        self._cache: dict[str, list[Example]] = {}
        self._init_sandbox(min_isolation)

    @staticmethod
    def _bucket(key: tuple) -> int:
        return int(hashlib.sha1(repr(key).encode()).hexdigest()[:8], 16) % 100

    def _keys(self, split: str) -> list[tuple[str, int, int]]:
        keys = [(f.name, k, m) for f in self.families for k in f.ks for m in f.ms]
        return [key for key in keys if self._bucket(key) in BUCKETS[split]]

    def _render(self, key: tuple[str, int, int], rng: random.Random) -> Example:
        fam = _BY_NAME[key[0]]
        k, m = key[1], key[2]
        fn = _evaluate(fam, k, m)
        tests = tuple(f"assert f({', '.join(map(repr, args))}) == {fn(*args)!r}"
                      for args in _discriminating_inputs(fam, k, m, rng))
        code = f"def f({fam.arg}):\n    return {_fmt(fam.body, k, m)}\n"
        question = f"f({fam.arg}): return {_fmt(fam.text, k, m)}"
        return Example(id=f"pycode-{fam.name}-{k}-{m}", question=question, answer=code,
                       tests=tests, meta={"family": fam.name})

    def split(self, name: str) -> list[Example]:
        self._check_split(name)
        if name not in self._cache:
            keys = self._keys(name)
            rng = random.Random(f"{self.data_seed}-{name}")
            rng.shuffle(keys)
            want = self.sizes[name]
            if want is not None:
                if want > len(keys):
                    raise ValueError(f"pycode has {len(keys)} {name} problems with these "
                                     f"families; n_{name}={want} is too many")
                keys = keys[:want]
            self._cache[name] = [self._render(key, rng) for key in keys]
        return self._cache[name]

    def build_prompt(self, example: Example, tokenizer: Any = None) -> str:
        return f"# {example.question}\n"
