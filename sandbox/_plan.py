"""A first plan for a suite, read from its tests: the calls with literal arguments that the
tests make into the program before any branch, loop or computed argument.

The evaluator sends a suite's plan ahead so that the program's process answers the expected
calls in one go instead of one round trip each (see `_evaluator.Link`). After a run, the
evaluator reports the calls the tests really made, which replace this plan; before the first
run, this is what there is. A call the tests make takes a planned answer only when it is
byte for byte the planned call, so a wrong guess here costs time, never a verdict. Runs in
the caller's process (trusted: it only reads the tests).

Understood shapes: statements `assert ...`, expressions, imports and assignments, in order;
inside them, calls to an entry point whose arguments are literals; and a function the tests
define and then call with an entry point (HumanEval's `check(candidate)`), followed into.
"""

from __future__ import annotations

import ast
import marshal
import warnings
from collections.abc import Iterable

_MAX_CALLS = 256
_PLAIN = (ast.Assert, ast.Expr, ast.Import, ast.ImportFrom, ast.Assign, ast.Pass)


def static_plan(tests: Iterable[str], names: Iterable[str]) -> list[bytes]:
    """The planned call messages (as the evaluator encodes them), possibly empty."""
    entries = set(names)
    calls: list[bytes] = []
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
            called = _call_with_entry(stmt, functions, entries)
            if called is not None:
                fn, alias = called
                if not _walk(fn.body, alias, entries, calls):
                    return calls
            elif not _walk([stmt], {}, entries, calls):
                return calls
    return calls


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


def _walk(stmts: list[ast.stmt], alias: dict[str, str], entries: set[str],
          calls: list[bytes]) -> bool:
    """Append the planned calls of `stmts`; False where planning must stop."""
    for stmt in stmts:
        if not isinstance(stmt, _PLAIN):
            return False
        for node in ([stmt.test] if isinstance(stmt, ast.Assert) else [stmt]):  # not `msg`
            if not _visit(node, alias, entries, calls):
                return False
    return True


def _visit(node: ast.AST, alias: dict[str, str], entries: set[str], calls: list[bytes]) -> bool:
    """Post-order, in evaluation order: a call's arguments before the call itself."""
    if isinstance(node, ast.Lambda | ast.GeneratorExp | ast.ListComp | ast.SetComp
                  | ast.DictComp | ast.BoolOp | ast.IfExp):
        return not _mentions(node, alias, entries)  # evaluated lazily or conditionally
    for child in ast.iter_child_nodes(node):
        if not _visit(child, alias, entries, calls):
            return False
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = alias.get(node.func.id, node.func.id)
        if name in entries:
            try:
                args = tuple(ast.literal_eval(a) for a in node.args)
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
                if None in kwargs:
                    return False
                body = b"c" + marshal.dumps((name, args, kwargs), 2)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return False  # a computed argument: the calls from here are not known
            if len(calls) >= _MAX_CALLS:
                return False
            calls.append(body)
    return True


def _mentions(node: ast.AST, alias: dict[str, str], entries: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and alias.get(n.id, n.id) in entries
               for n in ast.walk(node))
