"""`mbpp`: Mostly Basic Python Problems (Austin et al. 2021, https://arxiv.org/abs/2108.07732).

Data: the `datasets` hub id (`google-research-datasets/mbpp`, formerly `mbpp`; config `full`,
974 problems) or a local JSONL file (or a directory holding `mbpp.jsonl`) with the original
fields `task_id`, `text`, `code`, `test_list`, `test_setup_code`. Splits follow the paper, by
task_id: prompt 1-10 (few-shot examples), test 11-510, validation 511-600, train 601-974.
The prompt gives the problem text and its tests, as the paper does. Scoring runs `test_list`
in the sandbox's trusted evaluator (pass@1 per completion); the `challenge_test_list` is not
used, as in the paper's main results. The names the tests take from the program are the
names they read but do not bind, builtins excepted unless the reference solution defines
them (task 126's function is called `sum`). `test_setup_code` (tasks 367 and 927 build trees
from the solution's own `Node` class) runs in the program's process after the program, and
the trees reach the tests as references they pass back. Records in `IN_PROCESS` run their
tests inside the program's process, a declared and counted fallback.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Any

import sandbox
from gbmpo.tasks._code import DEFAULT_MIN_ISOLATION, CodeTask
from gbmpo.tasks.base import TASKS, Example, read_jsonl
from gbmpo.verifiers import code as code_verifier

SPLIT_IDS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
             "train": range(601, 975)}
_FIELDS = ("task_id", "text", "code", "test_list")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path, _FIELDS, "MBPP")


def defined_names(code: str) -> set[str]:
    """Names a solution binds at module level (functions, classes, assignments)."""
    try:
        with warnings.catch_warnings():  # old solutions have invalid escapes like "\."
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


@TASKS.register("mbpp")
class MBPP(CodeTask):
    """MBPP function-writing problems with assert tests; paper splits by task_id; sandboxed."""

    version = f"2+verifier{code_verifier.VERSION}"
    splits = ("train", "validation", "test", "prompt")
    IN_PROCESS = {
        "mbpp-533": "the tests pass the built-in types int and float to the function, and "
                    "types are not plain data",
    }

    def __init__(self, path: str | None = None,
                 hub_id: str = "google-research-datasets/mbpp", hub_config: str = "full",
                 num_fewshot: int = 0, timeout_s: float = 10.0,
                 chat_template_kwargs: dict | None = None,
                 min_isolation: str = DEFAULT_MIN_ISOLATION) -> None:
        """path: local mbpp.jsonl (or its directory); None loads `hub_id`/`hub_config` with
        `datasets`. num_fewshot: solved "prompt"-split problems shown first (the paper uses 3).
        timeout_s: sandbox wall-clock limit per program. chat_template_kwargs: extra
        arguments for the tokenizer's chat template, e.g. {"enable_thinking": false}.
        min_isolation: the lowest sandbox level code rewards may run under (rlimits,
        seccomp, landlock, namespaces); below it scoring raises, naming what is missing."""
        if not 0 <= num_fewshot <= len(SPLIT_IDS["prompt"]):
            raise ValueError(f"num_fewshot must be in 0..10 (the prompt split), got {num_fewshot}")
        self.path, self.hub_id, self.hub_config = path, hub_id, hub_config
        self.num_fewshot, self.timeout_s = num_fewshot, timeout_s
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._rows: dict[int, dict[str, Any]] | None = None
        self._cache: dict[str, list[Example]] = {}
        self._suites: dict[str, sandbox.Suite] = {}
        self._init_sandbox(min_isolation)

    def _load(self) -> dict[int, dict[str, Any]]:
        if self._rows is None:
            if self.path is None:
                import datasets  # heavy: only when the hub is actually used

                ds = datasets.load_dataset(self.hub_id, self.hub_config)
                rows = [dict(r) for part in ds.values() for r in part]
            else:
                p = Path(self.path).expanduser()
                if p.is_dir():
                    p = p / "mbpp.jsonl"
                if not p.is_file():
                    raise FileNotFoundError(
                        f"mbpp: {p} not found; give the original mbpp.jsonl (or its directory) "
                        f"as path, or leave path unset to load {self.hub_id!r} from the hub")
                rows = _read_jsonl(p)
            self._rows = {int(r["task_id"]): r for r in rows}
        return self._rows

    def split(self, name: str) -> list[Example]:
        self._check_split(name)
        if name not in self._cache:
            rows = self._load()
            self._cache[name] = [
                Example(id=f"mbpp-{i}", question=rows[i]["text"], answer=rows[i]["code"],
                        tests=tuple(rows[i]["test_list"]),
                        meta={"task_id": i,
                              "program_setup": (rows[i].get("test_setup_code") or "").strip()})
                for i in SPLIT_IDS[name] if i in rows
            ]
        return self._cache[name]

    def suite(self, example: Example) -> sandbox.Suite:
        """The entry points come from the tests and the reference solution (trusted), never
        from the program being scored; worked out once per record."""
        got = self._suites.get(example.id)
        if got is None:
            setup = example.meta.get("program_setup", "")
            try:
                names = sandbox.entry_points_of(example.tests,
                                                defined=defined_names(example.answer)
                                                | defined_names(setup))
            except SyntaxError:  # the sandbox reports the test that does not compile
                names = None
            got = self._suites[example.id] = sandbox.Suite(
                tuple(example.tests), entry_points=names, program_setup=setup,
                in_process=example.id in self.IN_PROCESS)
        return got

    @staticmethod
    def _task_text(ex: Example) -> str:
        shown = "\n".join(t for t in ex.tests if t.lstrip().startswith("assert"))
        return (f"You are an expert Python programmer, and here is your task: {ex.question} "
                f"Your code should pass these tests:\n\n{shown}\n")

    def build_prompt(self, example: Example, tokenizer: Any = None) -> str:
        """Chat template when the tokenizer has one; else the paper's plain format, in which
        the code follows "[BEGIN]" and ends with "[DONE]"."""
        shots = [s for s in self.split("prompt") if s.id != example.id][: self.num_fewshot]
        if getattr(tokenizer, "chat_template", None):
            messages = []
            for s in shots:
                messages += [{"role": "user", "content": self._task_text(s)},
                             {"role": "assistant", "content": f"```python\n{s.answer}\n```"}]
            messages.append({"role": "user", "content": self._task_text(example)})
            return tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True,
                                                 **self.chat_template_kwargs)
        blocks = [f"{self._task_text(s)}[BEGIN]\n{s.answer}\n[DONE]\n\n" for s in shots]
        return "".join(blocks) + f"{self._task_text(example)}[BEGIN]\n"
