"""The program's side of a proxied run. Runs in the confined, untrusted process: nothing here
is relied on for the verdict, which the evaluator alone decides from what arrives as plain
data (see `_evaluator`). This side only has to be faithful to honest programs.

Channel (two pipes, frames of `_wire`): after the program and the declared program setup
ran, this side sends one READY message saying what each entry name is; then, for each CALL
from the evaluator, one reply: the value (plain data; any other object as a numbered
reference), an exception, or a reason why the value cannot cross. Arguments that the call
mutated in place travel back with the reply, so a test that checks a list its function
sorted in place sees the change.

    READY  b"R" + per name: b"m" missing | b"c" callable | b"M" module name | b"d" value
    FAILED b"B" + (kind, detail)          the program (or its setup) did not run to the end
    CALL   b"c" + marshal v2 (name, args, kwargs)     plain data only   (evaluator -> here)
           b"C" + target (name or reference) + count + args + kwargs as `_wire` values
    BATCH  b"S" + framed CALLs expected in this order                    (evaluator -> here)
    VALUE  b"M" + marshal v2 (value, {arg index or keyword: new value})  plain data only
           b"V" + value + {arg index or keyword: new value} as `_wire` values
    RAISED b"X" + (module, name, args, message, traceback, kind)
    UNSENDABLE b"U" + reason
    END    b"K" + how many calls of a BATCH were answered
"""

from __future__ import annotations

import _signal  # not `signal`: its enum wrappers touch many objects (each a page to copy)
import builtins
import marshal
import os
import select
import sys
import traceback
import types
from collections.abc import Callable

from sandbox import _wire

TYPE_CHECKING = False  # typing is not imported at run time: every process is leaner
if TYPE_CHECKING:
    from typing import Any

_MUTABLE = (list, dict, set)
_BATCH_FLUSH_S = 0.002  # CPU seconds after which pending replies to expected calls go out


def _describe(e: BaseException) -> str:
    try:
        msg = str(e)
    except BaseException:  # a hostile __str__
        msg = "<unprintable>"
    return f"{type(e).__name__}: {msg}"[:500] if msg else type(e).__name__


def _kind(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, SystemExit):
        return "exited"
    return "error"


class _Refs:
    """Objects of the program's that crossed as references, by number."""

    def __init__(self) -> None:
        self.objects: list[Any] = []
        self.ids: dict[int, int] = {}

    def add(self, obj: Any) -> tuple[int, str]:
        key = id(obj)
        if key not in self.ids:
            self.ids[key] = len(self.objects)
            self.objects.append(obj)  # kept alive, so the id stays unique for the run
        try:
            name = type(obj).__qualname__
        except BaseException:
            name = "object"
        return self.ids[key], name if isinstance(name, str) else "object"

    def get(self, rid: int, _name: str) -> Any:
        if rid >= len(self.objects):
            raise _wire.WireError(f"unknown reference #{rid}")
        return self.objects[rid]


def _no_refs(obj: Any) -> tuple[int, str]:
    raise _wire.NotPlain(type(obj).__name__)


def serve(program: str, program_setup: str, names: list[str], req_fd: int, rep_fd: int,
          max_bytes: int) -> None:
    """Run the program, report its entry names, answer calls until the evaluator hangs up.
    Never returns."""
    send, frame, dumps, exit_ = _wire.send, _wire.frame, _wire.dumps, os._exit
    exec_, compile_ = builtins.exec, builtins.compile
    out, err = sys.stdout, sys.stderr
    refs = _Refs()

    def flush() -> None:
        try:
            out.flush()
            err.flush()
        except BaseException:  # the program may have broken the streams
            pass

    def fail(kind: str, e: BaseException | None, detail: str = "") -> None:
        if e is not None:
            detail = _describe(e)
            tb = e.__traceback__.tb_next if e.__traceback__ else None
            try:
                traceback.print_exception(type(e), e, tb, limit=-8, file=err)
            except BaseException:
                pass
        flush()
        try:
            send(rep_fd, frame(b"B" + dumps((kind, detail), _no_refs)))
        finally:
            exit_(1)

    module = types.ModuleType("solution")
    sys.modules["solution"] = module
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    try:
        code = compile_(program, "<program>", "exec")
    except (SyntaxError, ValueError) as e:
        fail("syntax_error", e)
    except BaseException as e:  # the compiler gave up: RecursionError, MemoryError
        fail(_kind(e), e)
    try:
        exec_(code, namespace)
    except BaseException as e:
        fail(_kind(e), e)
    if program_setup:
        try:
            exec_(compile_(program_setup, "<program setup>", "exec"), namespace)
        except BaseException as e:
            fail("error", None, f"the task's program setup failed: {_describe(e)}")
    parts = [b"R"]
    for name in names:
        obj = namespace.get(name, _MISSING)
        if obj is _MISSING:
            parts.append(b"m")
        elif isinstance(obj, types.ModuleType):
            parts.append(b"M" + dumps(str(getattr(obj, "__name__", name)), _no_refs))
        elif callable(obj):
            parts.append(b"c")
        else:
            parts.append(b"d" + dumps(obj, refs.add))
    flush()
    ready = frame(b"".join(parts))
    reader = _wire.Reader(req_fd, max_bytes)
    waiting = select.poll()
    waiting.register(req_fd, select.POLLIN)
    if not waiting.poll(0):  # else the evaluator's expected calls go out with READY
        send(rep_fd, ready)
        ready = b""
    while True:
        try:
            msg = reader.recv()
        except (_wire.WireError, OSError):
            exit_(3)
        if msg is None:  # the evaluator is done
            flush()
            exit_(0)
        if msg[:1] == b"S":
            _batch(msg, namespace, refs, rep_fd, lambda: reader.pending() or waiting.poll(0),
                   flush, ready)
            ready = b""
            continue
        if ready:
            send(rep_fd, ready)
            ready = b""
        reply = _answer(msg, namespace, refs)
        flush()  # the program's output comes before its reply, so none is lost at the end
        send(rep_fd, frame(reply))


def _batch(msg: bytes, namespace: dict[str, Any], refs: _Refs, rep_fd: int,
           interrupted: Callable[[], bool], flush: Callable[[], None], first: bytes) -> None:
    """Calls the evaluator expects the tests to make (b"S" + frames): answered in order,
    the replies written together, then b"K" + how many ran. Stops early when the evaluator
    sends something else: its tests went another way. `first`: what goes out before the
    replies (READY, when it has not gone out yet).

    Every `_BATCH_FLUSH_S` of CPU time (a profiling timer) the pending replies go out and
    the channel is checked for a new message: a call that never returns must not hold back
    the answers before it, which may already fail a test (the run then fails, not times
    out), and a batch the evaluator abandoned stops at the next call."""
    frame = _wire.frame
    pending: list[bytes] = [first]
    state = {"busy": False, "stop": False}

    def tick(*_: Any) -> None:
        if state["busy"]:
            return
        state["busy"] = True
        try:
            state["stop"] = state["stop"] or interrupted()
            if any(pending):
                flush()
                _wire.send(rep_fd, b"".join(pending))
                pending.clear()
        finally:
            state["busy"] = False

    previous = _signal.signal(_signal.SIGPROF, tick)
    _signal.setitimer(_signal.ITIMER_PROF, _BATCH_FLUSH_S, _BATCH_FLUSH_S)
    done, off = 0, 1
    try:
        while off < len(msg) and not state["stop"]:
            n = _wire.U32.unpack_from(msg, off + 1)[0]
            body = msg[off + 5:off + 5 + n]
            off += 5 + n
            pending.append(frame(_answer(body, namespace, refs)))
            done += 1
    finally:
        _signal.setitimer(_signal.ITIMER_PROF, 0, 0)
        _signal.signal(_signal.SIGPROF, previous)
    pending.append(frame(b"K" + _wire.U32.pack(done)))
    state["busy"] = False
    tick()


_MISSING = object()


def _snapshot(value: Any) -> bytes | None:
    """A cheap fingerprint of a mutable argument, to tell whether the call changed it."""
    try:
        return marshal.dumps(value, 2)
    except ValueError:  # holds one of the program's objects: compared as changed
        return None


def _answer(msg: bytes, namespace: dict[str, Any], refs: _Refs) -> bytes:
    """One call: b"c" + marshal (version 2, plain data only: what the evaluator sends
    when it can, decoded in C) or b"C" + `_wire` values (when references are involved)."""
    dumps, loads = _wire.dumps, _wire.loads
    try:
        if msg[:1] == b"c":
            target, args, kwargs = marshal.loads(msg[1:])
            args = list(args)
        else:
            target, off = loads(msg, refs.get, 1)
            (nargs,) = _wire.U32.unpack_from(msg, off)
            off += 4
            args = []
            for _ in range(nargs):
                value, off = loads(msg, refs.get, off)
                args.append(value)
            kwargs, off = loads(msg, refs.get, off)
    except (_wire.WireError, ValueError, EOFError, TypeError) as e:
        return b"X" + _raised(TypeError(f"the call could not be decoded: {e}"))
    mutable = {i: _snapshot(v) for i, v in enumerate(args) if type(v) in _MUTABLE}
    mutable.update((k, _snapshot(v)) for k, v in kwargs.items() if type(v) in _MUTABLE)
    fn = namespace.get(target, _MISSING) if isinstance(target, str) else target
    try:
        if fn is _MISSING:
            raise NameError(f"name {target!r} is not defined")
        result = fn(*args, **kwargs)
    except BaseException as e:
        return b"X" + _raised(e)
    try:
        back: dict[int | str, Any] = {}
        for key, before in mutable.items():
            value = args[key] if type(key) is int else kwargs[key]
            if before is None or _snapshot(value) != before:
                back[key] = value
        try:  # plain data only: marshal, in C (the evaluator reads it with its own decoder)
            return b"M" + marshal.dumps((result, back), 2)
        except ValueError:  # a subclass of a plain type, or an object of the program's
            return b"V" + dumps(result, refs.add) + dumps(back, refs.add)
    except _wire.NotPlain as e:
        return b"U" + dumps(str(e), _no_refs)
    except RecursionError:
        return b"U" + dumps("nested too deeply to encode", _no_refs)
    except MemoryError:
        return b"U" + dumps("too large to encode", _no_refs)


def _raised(e: BaseException) -> bytes:
    cls = type(e)
    try:
        lines = traceback.format_exception(cls, e, e.__traceback__.tb_next
                                           if e.__traceback__ else None, limit=-8)
        tb = "".join(lines)[-4000:]
    except BaseException:
        tb = ""
    head = (str(getattr(cls, "__module__", "")), str(getattr(cls, "__qualname__", "")))
    for args in (e.args, None):  # the arguments only when they are plain data
        try:
            return _wire.dumps((*head, args, _describe(e), tb, _kind(e)), _no_refs)
        except BaseException:
            continue
    return _wire.dumps(("", "Exception", None, "<unencodable exception>", "", "error"),
                       _no_refs)
