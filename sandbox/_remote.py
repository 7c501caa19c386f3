"""The program's side as the evaluator sees it: entry points and references (`Remote`),
and the channel through which every call crosses (`Link`).

A `Remote` is an object living in the program's process: an entry point (by name) or a
reference to one of the program's objects. Calling it sends the arguments across as plain
data (marshal version 2 when they are plain; `_wire` values when references are involved)
and returns the result rebuilt as fresh builtins by a decoder that accepts only plain data,
so a rigged __eq__, an int subclass or a patched module in the program never reaches a test.
A result that is not plain data arrives as another `Remote`: it can be passed back to the
program or called, and any other use (comparison, truth value, len, iteration, attributes,
str) ends the run with a clear reason, even if a test swallows the exception. A value of the
program's that the tests only need to hand back (a tree built by MBPP's setup code, an
instance of the program's class) thus works without the in-process fallback.
"""

from __future__ import annotations

import builtins
import importlib
import marshal
import sys
from typing import Any

from sandbox import _wire

_NOT_RAISABLE = (SystemExit, KeyboardInterrupt, GeneratorExit)


class ProgramError(Exception):
    """The program raised an exception of a type the evaluator does not share (its own
    class, or one from a module); the message names the type."""


class _Abort(BaseException):
    """Ends the current test after a recorded violation. The verdict comes from the record,
    so a test that catches this exception does not change it."""


class Remote:
    """An object living in the program's process: an entry point (by name) or a reference.
    Calling it is a call into the program; nothing else about it can be observed."""

    __slots__ = ("_link", "_ref", "_target", "_what")

    def __init__(self, link: Link, ref: int | None, target: Any, what: str) -> None:
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_what", what)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._link.call(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<the program's {self._what}>"

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        self._link.misuse(self, "==")
        return False  # not reached

    __hash__ = object.__hash__


def _misuse(op: str) -> Any:
    def method(self: Remote, *args: Any) -> Any:
        self._link.misuse(self, op)

    method.__name__ = op
    return method


for _op in ("__ne__ __lt__ __le__ __gt__ __ge__ __bool__ __len__ __iter__ __next__ "
            "__reversed__ __contains__ __getitem__ __setitem__ __delitem__ __getattr__ "
            "__setattr__ __delattr__ __str__ __format__ __bytes__ __int__ __float__ "
            "__complex__ __index__ __round__ __trunc__ __floor__ __ceil__ __abs__ __neg__ "
            "__pos__ __invert__ __enter__ __exit__ __await__ __dir__").split():
    setattr(Remote, _op, _misuse(_op))
for _op in "add sub mul matmul truediv floordiv mod divmod pow lshift rshift and xor or".split():
    for _fmt in ("__{}__", "__r{}__", "__i{}__"):
        setattr(Remote, _fmt.format(_op), _misuse(_fmt.format(_op)))


class Link:
    """One job's channel to the program's process, and the record of its first violation.

    Expected calls: the calls read from the tests (`_plan`) are sent at once at the start
    (`expect`), and the program's process answers them in order without waiting for each
    one; a call the tests make now takes the next answer only when it is byte for byte the
    expected call, else the batch is abandoned and calls go one by one. This saves two
    context switches per call, and changes nothing a test can observe for a program whose
    functions depend only on their arguments (a stateful program may see some expected
    calls that a diverging test then does not make)."""

    def __init__(self, req_fd: int, rep_fd: int, max_bytes: int) -> None:
        self.req_fd, self.max_bytes = req_fd, max_bytes
        self.reader = _wire.Reader(rep_fd, max_bytes)
        self.refs: dict[int, Remote] = {}
        self.violation: tuple[str, str] | None = None
        self.calls = 0
        self.plan: list[bytes] = []
        self.expecting = False  # answers to the plan are (still) coming

    def expect(self, plan: list[bytes]) -> None:
        if plan:
            try:
                _wire.send(self.req_fd, _wire.frame(b"S" + b"".join(_wire.frame(c)
                                                                   for c in plan)))
            except OSError:  # the program's process ended already: READY says how
                return
            self.plan, self.expecting = plan, True

    # ---------------------------------------------------------------- violations
    def violate(self, kind: str, detail: str) -> None:
        if self.violation is None:
            self.violation = (kind, detail)
        raise _Abort(detail)

    def misuse(self, obj: Remote, op: str) -> None:
        self.violate("error", f"a test applied {op.strip('_')} to {obj!r}, which is not plain "
                     "data (None, bool, int, float, complex, str, bytes and lists, tuples, "
                     "dicts, sets of them): the program's objects can only be passed back to "
                     "it or called")

    # ---------------------------------------------------------------- plain data
    def _out(self, obj: Any) -> tuple[int, str]:
        if type(obj) is Remote and obj._link is self and obj._ref is not None:
            return obj._ref, ""
        raise _wire.NotPlain(repr(obj) if type(obj) is Remote else f"a {type(obj).__name__}")

    def _in(self, rid: int, name: str) -> Remote:
        r = self.refs.get(rid)
        if r is None:
            r = self.refs[rid] = Remote(self, rid, None, f"{name or 'object'} #{rid}")
        return r

    # ---------------------------------------------------------------- protocol
    def ready(self, names: list[str], ns: dict[str, Any]) -> tuple[str, str] | None:
        """Read the program's READY message and bind the entry points into `ns`; returns
        (kind, detail) if the program did not run to the end."""
        msg = self._receive("before its entry points were ready")
        tag = msg[:1]
        if tag == b"B":
            info = self._decode(msg, 1)
            if (type(info) is tuple and len(info) == 2 and all(type(x) is str for x in info)
                    and info[0] in ("syntax_error", "error", "memory", "exited")):
                return info
            self.violate("error", "the program's process sent a malformed failure report")
        if tag != b"R":
            self.violate("error", "the program's process broke the protocol (no READY)")
        off = 1
        for name in names:
            kind = msg[off:off + 1]
            off += 1
            if kind == b"m":
                continue
            if kind == b"c":
                ns[name] = Remote(self, None, name, f"function {name}")
            elif kind in (b"d", b"M"):
                try:
                    value, off = _wire.loads(msg, self._in, off)
                except _wire.WireError as e:
                    self.violate("error", f"the program's process sent a malformed value: {e}")
                ns[name] = self._module(name, value) if kind == b"M" else value
            else:
                self.violate("error", "the program's process sent a malformed READY message")
        if off != len(msg):
            self.violate("error", "the program's process sent a malformed READY message")
        return None

    def _module(self, name: str, module: Any) -> Any:
        """A test that uses a module it did not import (relying on the program's import)
        gets the evaluator's own copy of that standard-library module."""
        if type(module) is str and module.partition(".")[0] in sys.stdlib_module_names:
            try:
                return importlib.import_module(module)
            except ImportError:
                pass
        return Remote(self, None, None, f"module {module if type(module) is str else name}")

    def call(self, fn: Remote, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.violation is not None:
            raise _Abort(self.violation[1])
        what = fn._what
        if fn._ref is None and fn._target is None:
            self.misuse(fn, "a call")
        parts = None
        if fn._ref is None:
            try:  # plain data only: marshal, which the program's side decodes in C
                parts = [b"c", marshal.dumps((fn._target, args, kwargs), 2)]
            except ValueError:  # a reference, or a subclass of a plain type
                parts = None
        if parts is None:
            try:
                parts = [b"C", _wire.dumps(fn if fn._ref is not None else fn._target,
                                           self._out), _wire.U32.pack(len(args))]
                parts += [_wire.dumps(a, self._out) for a in args]
                parts.append(_wire.dumps(kwargs, self._out))
            except _wire.NotPlain as e:
                self.violate("error", f"a test passed {e} to the program's {what}: only plain "
                             "data and the program's own objects cross the process boundary "
                             "(a task that needs more declares the record in-process)")
        body = b"".join(parts)
        when = f"during a call to {what}"
        reply = None
        if self.expecting:
            if self.calls < len(self.plan) and body == self.plan[self.calls]:
                reply = self._receive(when)
                if reply[:1] == b"K":  # the program's side stopped early
                    self.expecting, reply = False, None
            else:  # the tests went another way (or further): one by one from here
                self._send(_wire.frame(body), when)
                while self._receive(when)[:1] != b"K":
                    pass
                self.expecting = False
                reply = self._receive(when)
        if reply is None:
            self._send(_wire.frame(body), when)
            reply = self._receive(when)
        self.calls += 1
        tag = reply[:1]
        if tag == b"M" or tag == b"V":
            try:
                if tag == b"M":
                    pair, off = _wire.loads_marshal(reply, 1)
                    if type(pair) is not tuple or len(pair) != 2:
                        raise _wire.WireError("not a (result, arguments) pair")
                    value, back = pair
                else:
                    value, off = _wire.loads(reply, self._in, 1)
                    back, off = _wire.loads(reply, self._in, off)
                if off != len(reply) or type(back) is not dict:
                    raise _wire.WireError("trailing bytes")
            except _wire.WireError as e:
                self.violate("error", f"the program's {what} sent a malformed result: {e}")
            if back:
                self._copy_back(what, args, kwargs, back)
            return value
        if tag == b"X":
            raise self._exception(what, reply)
        if tag == b"U":
            reason = self._decode(reply, 1)
            self.violate("error", f"the program's {what} returned a value that cannot cross "
                         f"as plain data: {reason if type(reason) is str else '?'}")
        self.violate("error", f"the program's process broke the protocol during {what}")

    def _send(self, data: bytes, when: str) -> None:
        try:
            _wire.send(self.req_fd, data)
        except OSError:
            self.violate("died", f"the program's process ended {when}")

    def _receive(self, when: str) -> bytes:
        try:
            msg = self.reader.recv()
        except _wire.WireError as e:
            self.violate("error", f"the program's process sent an invalid message {when}: {e}")
        except OSError:
            msg = None
        if msg is None:
            self.violate("died", f"the program's process ended {when}")
        return msg

    def _decode(self, msg: bytes, off: int) -> Any:
        try:
            value, end = _wire.loads(msg, self._no_ref, off)
        except _wire.WireError as e:
            self.violate("error", f"the program's process sent a malformed message: {e}")
        if end != len(msg):
            self.violate("error", "the program's process sent a malformed message")
        return value

    def _no_ref(self, rid: int, name: str) -> Any:
        raise _wire.WireError("a reference where none is allowed")

    def _copy_back(self, what: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                   back: dict[Any, Any]) -> None:
        """Arguments the call mutated in place: the test's own objects take the new values."""
        for key, new in back.items():
            if type(key) is int and 0 <= key < len(args):
                orig = args[key]
            elif type(key) is str and key in kwargs:
                orig = kwargs[key]
            else:
                orig = None
            if type(new) not in (list, dict, set) or not isinstance(orig, type(new)):
                self.violate("error", f"the program's {what} sent back an argument that does "
                             "not match what it was given")
            if type(new) is list:
                orig[:] = new
            else:
                orig.clear()
                orig.update(new)

    def _exception(self, what: str, reply: bytes) -> BaseException:
        rec = self._decode(reply, 1)
        if not (type(rec) is tuple and len(rec) == 6
                and all(type(rec[i]) is str for i in (0, 1, 3, 4, 5))):
            self.violate("error", f"the program's {what} sent a malformed exception")
        module, name, args, message, tb, kind = rec
        if kind == "exited":
            self.violate("exited", f"the program exited during a call to {what} ({message})")
        if kind == "memory":
            self.violate("memory", f"the program ran out of memory in {what} ({message})")
        cls = getattr(builtins, name, None) if module == "builtins" else None
        exc: BaseException | None = None
        if (isinstance(cls, type) and issubclass(cls, BaseException)
                and not issubclass(cls, _NOT_RAISABLE)):
            try:
                exc = cls(*args) if type(args) is tuple else cls(message)
            except Exception:
                exc = None
        if exc is None:
            exc = ProgramError(f"{module}.{name}: {message}" if module else message)
        if tb:
            exc.add_note(f"raised in the program's process by its {what}:\n{tb.rstrip()}")
        return exc
