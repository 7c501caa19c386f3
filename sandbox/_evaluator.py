"""The trusted evaluator: runs a job's tests and alone decides its verdict.

One evaluator process per worker, forked by the worker and confined like the programs
(privilege drop, Landlock, seccomp, limits), but outside the nested Landlock domain the
programs run in, and long-lived, so a run costs no extra process. It never runs program
code. For each job it builds a fresh namespace: the task's trusted setup first (e.g.
HumanEval's prompt, whose helpers the tests call), then the entry points (`_remote.Remote`),
then the tests, in order. Every other name a test uses resolves in that namespace or the
evaluator's own builtins, which the program cannot reach: it is another process, which it
cannot trace, read or write (non-dumpable; seccomp forbids ptrace and process_vm_*; where
Landlock scopes signals, the program sits in a nested domain that cannot signal it either).

Protocol with the worker, over a stream socket: each job is a u32 length and the job (nonce,
then `_job` items), with the program's channel (two pipe fds) attached; each answer is a u32
length, the tests' stdout and stderr, and the verdict (see `run_job`).
"""

from __future__ import annotations

import builtins
import gc
import json
import marshal
import os
import socket
import struct
import sys
import traceback
from typing import Any

from sandbox import _wire
from sandbox._remote import Link, _Abort

_LEN = struct.Struct(">I")
_CODE_CACHE = 4096  # compiled tests kept per evaluator
CAPTURE_BYTES = 1 << 16  # the tests' own output kept per job
RECYCLE_AFTER = 2000  # jobs; a fresh evaluator then bounds heap growth and state drift


# ------------------------------------------------------------------------------ one job
def _classify(e: BaseException) -> str:
    if isinstance(e, AssertionError):
        return "failed"
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, SystemExit):
        return "exited"
    return "error"


def _describe(e: BaseException) -> str:
    msg = str(e)
    return f"{type(e).__name__}: {msg}"[:500] if msg else type(e).__name__


def _items(data: bytes, off: int) -> list[bytes]:
    out = []
    while off < len(data):
        (n,) = _LEN.unpack_from(data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def _code(item: bytes, label: str, cache: dict[int, Any]) -> Any:
    """A test or setup item: b"M" + id + marshalled code (cached by id), or b"S" + source
    that did not compile where the pool compiled it (compiling it again raises)."""
    if item[:1] == b"M":
        key = int.from_bytes(item[1:9], "little")
        code = cache.get(key)
        if code is None:
            if len(cache) >= _CODE_CACHE:
                cache.clear()
            code = cache[key] = marshal.loads(item[9:])
        return code
    return compile(item[1:].decode("utf-8", "surrogatepass"), label, "exec")


def run_job(body: bytes, req_fd: int, rep_fd: int, cache: dict[int, Any]
            ) -> tuple[bytes, bool]:
    """Run one job's tests; returns (message for the worker, whether to retire this
    evaluator). The message: u32 length + verdict, then a flags byte (4, set by `main`:
    this evaluator retires). `cache` holds loaded code by id."""
    nonce = body[:16]
    header, setup, plan_blob, *tests = _items(body, 16)
    spec = marshal.loads(header)  # from the pool, through the worker: trusted
    link = Link(req_fd, rep_fd, spec["max_bytes"])
    verdict, retire = _run(link, nonce, spec["names"], setup, tests, cache,
                           _frames(plan_blob))
    return _LEN.pack(len(verdict)) + verdict + b"\0", retire


def _frames(blob: bytes) -> list[bytes]:
    out, off = [], 0
    while off < len(blob):
        n = _wire.U32.unpack_from(blob, off + 1)[0]
        out.append(blob[off + 5:off + 5 + n])
        off += 5 + n
    return out


def _run(link: Link, nonce: bytes, names: list[str], setup: bytes, tests: list[bytes],
         cache: dict[int, Any], plan: list[bytes]) -> tuple[bytes, bool]:
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    err = sys.stderr

    def verdict(kind: str, index: int | None, e: BaseException | None,
                detail: str = "") -> bytes:
        if link.violation is not None:  # the first violation decides, whatever followed
            kind, detail = link.violation
        elif e is not None:
            detail = _describe(e)
            try:  # the test's frames, not the evaluator's
                te = traceback.TracebackException.from_exception(e, limit=-8)
                te.stack = traceback.StackSummary.from_list(
                    [f for f in te.stack if f.filename != __file__])
                err.write("".join(te.format()))
            except Exception:
                pass
        return b"F" + json.dumps({"kind": kind, "test": index, "detail": detail,
                                  "calls": link.calls}).encode()[:4000]

    try:
        if setup:
            exec(_code(setup, "<setup>", cache), ns)
    except BaseException as e:
        return verdict("error", None, None, f"the task's setup failed: {_describe(e)}"), False
    try:
        codes = [_code(t, f"<test {i}>", cache) for i, t in enumerate(tests)]
    except BaseException as e:
        return verdict("error", None, None, f"a test does not compile: {_describe(e)}"), False
    try:
        link.expect(plan)
        failed = link.ready(names, ns)
    except _Abort:
        return verdict("error", None, None), False
    if failed is not None:
        return verdict(failed[0], None, None, failed[1]), False
    for index, code in enumerate(codes):
        try:
            exec(code, ns)
        except BaseException as e:
            return verdict(_classify(e), index, e), isinstance(e, MemoryError)
        if link.violation is not None:  # a test swallowed the _Abort
            return verdict("error", index, None), False
    return b"P" + nonce + f"{len(codes)} {link.calls}".encode(), False


# ------------------------------------------------------------------------------ process
def _recv_job(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
    buf = bytearray(data)
    if not buf:
        return None
    while len(buf) < 4 or len(buf) < 4 + _LEN.unpack_from(buf)[0]:
        more = sock.recv(1 << 20)
        if not more:
            return None
        buf += more
    return bytes(buf[4:]), fds


class _Capture:
    """A job's stdout or stderr in the evaluator (test output, tracebacks): kept in memory,
    up to `CAPTURE_BYTES`, and sent with the verdict."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> int:
        if self.size < CAPTURE_BYTES:
            self.parts.append(text[:CAPTURE_BYTES - self.size])
            self.size += len(self.parts[-1])
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def getvalue(self) -> bytes:
        return "".join(self.parts).encode("utf-8", "backslashreplace")


def main(sock_fd: int) -> None:
    """The evaluator's loop: a job (with the two fds of its program's channel) in, a verdict
    out, until the worker closes the socket. Never returns."""
    sock = socket.socket(fileno=sock_fd)
    cache: dict[int, Any] = {}
    gc.collect()
    gc.freeze()
    for n in range(1, RECYCLE_AFTER + 1):
        job = _recv_job(sock)
        if job is None:
            break
        body, fds = job
        if len(fds) != 2:
            break
        req_w, rep_r = fds
        out, err = _Capture(), _Capture()
        sys.stdout, sys.stderr = out, err
        try:
            message, retire = run_job(body, req_w, rep_r, cache)
        except BaseException as e:  # a bug here must not pass anything
            failure = b"F" + json.dumps({"kind": "sandbox_error", "test": None,
                                         "detail": f"evaluator: {_describe(e)}"}).encode()
            message, retire = _LEN.pack(len(failure)) + failure + b"\0", True
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        retire = retire or n == RECYCLE_AFTER
        if retire:  # flag 4: the worker starts a new evaluator before the next job
            v = _LEN.unpack_from(message)[0]
            message = message[:4 + v] + bytes([message[4 + v] | 4]) + message[5 + v:]
        streams = b"".join(_LEN.pack(len(b)) + b for b in (out.getvalue(), err.getvalue()))
        # the verdict first: the worker then stops the program, rather than seeing it end
        sock.sendall(_LEN.pack(len(message) + len(streams)) + streams + message)
        os.close(req_w)
        os.close(rep_r)
        if retire:
            break
    os._exit(0)
