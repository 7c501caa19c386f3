"""Which names the tests take from the program: the names they read without binding.

Runs where the tests are compiled (the caller's process, trusted), on the code objects, so
it sees exactly what the interpreter will look up: module-level `LOAD_NAME` and
`LOAD_GLOBAL` anywhere (in functions, lambdas and comprehensions the tests define).
"""

from __future__ import annotations

import builtins
import dis
import warnings
from collections.abc import Iterable
from types import CodeType

_LOADS = {"LOAD_NAME", "LOAD_GLOBAL"}
_BINDS = {"STORE_NAME", "STORE_GLOBAL", "DELETE_NAME", "DELETE_GLOBAL"}
BUILTIN_NAMES = frozenset(dir(builtins))


def _walk(code: CodeType, loaded: set[str], bound: set[str]) -> None:
    for ins in dis.get_instructions(code):
        if ins.opname in _LOADS:
            loaded.add(ins.argval)
        elif ins.opname in _BINDS:
            bound.add(ins.argval)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _walk(const, loaded, bound)


def read_and_bound(codes: Iterable[CodeType]) -> tuple[set[str], set[str]]:
    """(names read as globals, names bound at module level or through `global`)."""
    loaded: set[str] = set()
    bound: set[str] = set()
    for code in codes:
        _walk(code, loaded, bound)
    return loaded, bound


def free_names(codes: Iterable[CodeType], setup: Iterable[CodeType] = ()) -> list[str]:
    """Names the tests read but neither they nor the trusted `setup` bind, builtins
    excepted: the program's entry points when a job does not declare them. Sorted."""
    loaded, bound = read_and_bound(codes)
    _, setup_bound = read_and_bound(setup)
    return sorted(loaded - bound - setup_bound - BUILTIN_NAMES - {"__builtins__"})


def entry_points_of(tests: Iterable[str], setup: str = "",
                    defined: Iterable[str] = ()) -> list[str]:
    """The names a suite's tests take from the program: what the tests (test sources,
    compiled here) read without binding, builtins excepted unless the task's own solution
    defines them (`defined`: e.g. MBPP task 126, whose function is called `sum`). A program
    that shadows a builtin the tests use (abs, sorted, set...) thus never replaces it."""
    with warnings.catch_warnings():  # e.g. invalid escapes in old test strings
        warnings.simplefilter("ignore")
        codes = [compile(t, f"<test {i}>", "exec") for i, t in enumerate(tests)]
        setup_codes = [compile(setup, "<setup>", "exec")] if setup else []
    loaded, bound = read_and_bound(codes)
    _, setup_bound = read_and_bound(setup_codes)
    keep = set(defined)
    return sorted(n for n in loaded - bound - setup_bound - {"__builtins__"}
                  if n not in BUILTIN_NAMES or n in keep)
