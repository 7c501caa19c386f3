"""A suite's plan, read from its tests: the calls with literal arguments that the tests make
into the program, in order, before any branch, loop or computed argument.

The evaluator sends the plan ahead so that the program's process answers the expected calls
in one go instead of one round trip each (see `_remote.Link`). A call the tests make takes a
planned answer only when it is byte for byte the planned call, so a wrong guess here costs
time, never a verdict. Runs in the caller's process (trusted: it only reads the tests).

What a plan may show the program, and what it may not. A program sees every call it is
asked anyway; a plan only shows it later calls early. It must not show it anything that
could tell it an earlier answer, so:

- a plan holds only literals written in the tests, never a value computed at run time (a
  previous program's answer, say, which would let the next sample copy it);
- it stops before the first call whose arguments contain a value (any number, string or
  other constant, at any depth) that the tests write outside entry-point arguments in an
  earlier statement (or in the same one, when it makes several calls): `assert f(3) == 6`
  then `assert f(6) == 12` plans `f(3)` only, since `6` would tell the program what `f(3)`
  must return.

Understood shapes: statements `assert ...`, expressions, imports and assignments, in order;
inside them, calls to an entry point whose arguments are literals; and a function the tests
define and then call with an entry point (HumanEval's `check(candidate)`), followed into.
"""

from __future__ import annotations

import ast
import marshal
import warnings
from collections.abc import Iterable
from typing import Any

_MAX_CALLS = 256
_PLAIN = (ast.Assert, ast.Expr, ast.Import, ast.ImportFrom, ast.Assign, ast.Pass)


def static_plan(tests: Iterable[str], names: Iterable[str]) -> list[bytes]:
    """The planned call messages (as the evaluator encodes them), possibly empty."""
    plan = _Planner(set(names))
    functions: dict[str, ast.FunctionDef] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trees = [ast.parse(t) for t in tests]
    except (SyntaxError, ValueError):
        return []
    for tree in trees:
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef):
                functions[stmt.name] = stmt
                continue
            called = _call_with_entry(stmt, functions, plan.entries)
            if called is not None:
                fn, alias = called
                if not plan.walk(fn.body, alias):
                    return plan.calls
            elif not plan.walk([stmt], {}):
                return plan.calls
    return plan.calls


def _call_with_entry(stmt: ast.stmt, functions: dict[str, ast.FunctionDef],
                     entries: set[str]) -> tuple[ast.FunctionDef, dict[str, str]] | None:
    """`check(entry)`: the function, and its first parameter bound to the entry point."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return None
    call = stmt.value
    if not (isinstance(call.func, ast.Name) and call.func.id in functions
            and len(call.args) == 1 and not call.keywords
            and isinstance(call.args[0], ast.Name) and call.args[0].id in entries):
        return None
    fn = functions[call.func.id]
    params = fn.args.posonlyargs + fn.args.args
    if not params:
        return None
    return fn, {params[0].arg: call.args[0].id}


def _atoms(value: Any, out: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The scalars inside a literal value, typed (True and 1 are different atoms)."""
    if isinstance(value, list | tuple | set | frozenset):
        for v in value:
            _atoms(v, out)
    elif isinstance(value, dict):
        for k, v in value.items():
            _atoms(k, out)
            _atoms(v, out)
    else:
        out.add((type(value).__name__, repr(value)))
    return out


class _Planner:
    def __init__(self, entries: set[str]) -> None:
        self.entries = entries
        self.calls: list[bytes] = []
        self.shown: set[tuple[str, str]] = set()  # constants outside planned arguments

    def walk(self, stmts: list[ast.stmt], alias: dict[str, str]) -> bool:
        """Plan the calls of `stmts`; False where planning must stop."""
        for stmt in stmts:
            if not isinstance(stmt, _PLAIN):
                return False
            # everything the statement holds outside entry-point arguments (the expected
            # values it compares answers with, among others) is off limits from here on;
            # from its own calls too, unless there is only one (whose answer it checks)
            calls = [c for c in ast.walk(stmt) if self._is_entry_call(c, alias)]
            in_args = {id(n) for call in calls
                       for a in (*call.args, *(k.value for k in call.keywords))
                       for n in ast.walk(a)}
            consts = {(type(n.value).__name__, repr(n.value)) for n in ast.walk(stmt)
                      if isinstance(n, ast.Constant) and id(n) not in in_args}
            if len(calls) > 1:
                self.shown |= consts
            for node in ([stmt.test] if isinstance(stmt, ast.Assert) else [stmt]):  # no msg
                if not self._visit(node, alias):
                    return False
            self.shown |= consts
        return True

    def _is_entry_call(self, node: ast.AST, alias: dict[str, str]) -> bool:
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and alias.get(node.func.id, node.func.id) in self.entries)

    def _visit(self, node: ast.AST, alias: dict[str, str]) -> bool:
        """Post-order, in evaluation order: a call's arguments before the call itself."""
        if isinstance(node, ast.Lambda | ast.GeneratorExp | ast.ListComp | ast.SetComp
                      | ast.DictComp | ast.BoolOp | ast.IfExp):
            return not self._mentions(node, alias)  # evaluated lazily or conditionally
        for child in ast.iter_child_nodes(node):
            if not self._visit(child, alias):
                return False
        if not self._is_entry_call(node, alias):
            return True
        name = alias.get(node.func.id, node.func.id)
        try:
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            if None in kwargs:
                return False
            body = b"c" + marshal.dumps((name, args, kwargs), 2)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False  # a computed argument: the calls from here are not known
        if _atoms((args, tuple(kwargs.values())), set()) & self.shown \
                or len(self.calls) >= _MAX_CALLS:
            return False  # showing it could tell the program an earlier answer
        self.calls.append(body)
        return True

    def _mentions(self, node: ast.AST, alias: dict[str, str]) -> bool:
        return any(isinstance(n, ast.Name) and alias.get(n.id, n.id) in self.entries
                   for n in ast.walk(node))
