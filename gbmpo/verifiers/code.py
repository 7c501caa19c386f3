"""Code verification: extract a program from a completion, run it against tests in the
sandbox, and the unbiased pass@k estimator.

Extraction is two small named steps (the first that finds something decides):

- `extract_fenced`: the first Markdown code block (```python ... ``` or ``` ... ```) that
  defines a function, else the first block; an unterminated block (generation cut off) runs to
  the end of the text.
- `extract_raw`: the completion itself, cut at the first stop marker (`[DONE]`, a closing
  fence, `if __name__ == "__main__":`).

Nothing here executes code: programs go to `sandbox.Pool` (one per process, created on first
use and released by `release_pool()`, which every code task's `close()` calls), where the
tests run in a trusted evaluator and every call into the program crosses a process boundary
as plain data (docs/sandbox.md). Version 2: verdicts from that evaluator.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence

import sandbox
from gbmpo.tasks.base import Score

VERSION = "2"  # bump when extraction or scoring changes; code tasks fold it into their version

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_STOPS = ("[DONE]", "\n```", '\nif __name__ == "__main__":', "\nif __name__ == '__main__':")


def extract_fenced(completion: str) -> str | None:
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    blocks = [(lang, body) for lang, body in blocks if lang in ("", "python", "py", "python3")]
    if not blocks:
        return None
    for _, body in blocks:
        if re.search(r"^\s*def ", body, re.M):
            return body
    return blocks[0][1]


def extract_raw(completion: str) -> str:
    cut = len(completion)
    for stop in _STOPS:
        i = completion.find(stop)
        if i != -1:
            cut = min(cut, i)
    return completion[:cut]


def extract_code(completion: str) -> tuple[str, str]:
    """(code, step) where step is "fenced" or "raw"."""
    code = extract_fenced(completion)
    if code is not None:
        return code, "fenced"
    return extract_raw(completion), "raw"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021,
    https://arxiv.org/abs/2107.03374, eq. 1): 1 - C(n-c, k) / C(n, k), computed as a product
    so that large n does not overflow."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ------------------------------------------------------------------------- shared pool
_pool: sandbox.Pool | None = None
_pool_lock = threading.Lock()


def get_pool(min_isolation: sandbox.Isolation | str | None = None,
             who: str = "code rewards") -> sandbox.Pool:
    """The process's sandbox pool (one worker per core this process may use), started on
    first use. With `min_isolation`, raises sandbox.IsolationError, naming what is missing
    and how to get it, when the pool runs below that level."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = sandbox.Pool()
        pool = _pool
    if min_isolation is not None:
        pool.report.require(min_isolation, who)
    return pool


def release_pool() -> None:
    """Stop the shared pool (a later call to `get_pool` starts a new one)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def isolation_level(min_isolation: sandbox.Isolation | str | None = None,
                    who: str = "code rewards") -> str:
    """Name of the sandbox isolation level in force (starts the pool if needed; raises
    sandbox.IsolationError below `min_isolation`)."""
    return get_pool(min_isolation, who).level.name.lower()


def run_programs(programs: Sequence[str], suites: Sequence[sandbox.Suite | Sequence[str]],
                 timeout_s: float = 10.0, min_isolation: sandbox.Isolation | str | None = None,
                 who: str = "code rewards") -> list[sandbox.ExecResult]:
    """Run programs[i] against suites[i] in the sandbox, in parallel; results in order."""
    limits = sandbox.Limits(timeout_s=timeout_s)
    return get_pool(min_isolation, who).map(list(programs), list(suites), limits)


def scores_of(results: Sequence[sandbox.ExecResult], extracted: Sequence[str],
              methods: Sequence[str] | None = None) -> list[Score]:
    """Reward 1.0 when every test passed in the sandbox, else 0.0. `details` hold `pass`
    (the same 0/1) and `syntax_ok` (the program compiled)."""
    scores = []
    for i, r in enumerate(results):
        ok = float(r.passed)
        scores.append(Score(
            reward=ok, correct=r.passed, extracted=extracted[i],
            method=f"sandbox/{methods[i]}" if methods is not None else "sandbox",
            details={"pass": ok, "syntax_ok": float(r.status is not sandbox.Status.SYNTAX_ERROR)},
        ))
    return scores


def score_completions(completions: Sequence[str], tests: Sequence[sandbox.Suite | Sequence[str]],
                      timeout_s: float = 10.0,
                      min_isolation: sandbox.Isolation | str | None = None) -> list[Score]:
    """Extract the code of each completion and score it against its tests in the sandbox."""
    extracted = [extract_code(c) for c in completions]
    codes = [code for code, _ in extracted]
    results = run_programs(codes, tests, timeout_s, min_isolation)
    return scores_of(results, codes, [step for _, step in extracted])
