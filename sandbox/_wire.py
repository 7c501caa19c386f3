"""Plain data across the boundary between a program's process and the trusted evaluator.

Only these cross: None, bool, int, float, complex, str, bytes, and lists, tuples, dicts,
sets and frozensets of them, plus *references*: opaque numbered handles for any other object
the program holds (they can be passed back into the program and nothing else; see
`_evaluator.Remote`). No pickle, no eval: a value is a tag byte and a fixed layout.

    N None   T True   F False   i int64   I big int (u32 length, signed little-endian)
    f float (IEEE double)       c complex (two doubles)
    s str (u32 length, UTF-8 with surrogates passed through)        b bytes (u32 length)
    l list  t tuple  e set  z frozenset (u32 count, then the items)  d dict (u32 count, pairs)
    r reference (u32 id, u16 length + UTF-8 type name)

The decoder is the trusted side's only parser of what a program sends, so it bounds
everything (`MAX_DEPTH`, `MAX_ITEMS`, the frame size), calls no method of any object it
builds except the hashing of fresh builtin values for sets and dict keys, and reports any
malformed input as `WireError`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

TYPE_CHECKING = False  # typing is not imported at run time: every process is leaner
if TYPE_CHECKING:
    from typing import Any


MAX_DEPTH = 100  # nesting of containers
MAX_ITEMS = 1 << 22  # values in one message
U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_C128 = struct.Struct("<dd")
_U16 = struct.Struct("<H")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_SEQ_TAGS = {list: b"l", tuple: b"t", set: b"e", frozenset: b"z"}
_MARK = b"\xa7"  # first byte of every frame
# bound at import: a program that replaces os.write or os.read breaks only its own calls
_write, _read = os.write, os.read
# A subclass of a plain type crosses as its base type's value, read through the base type's
# own methods (a rigged __eq__, __iter__ or __str__ is never called): a namedtuple arrives as
# a tuple, a Counter as a dict, an int subclass as its int.
_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (int, int.__index__), (float, float.__float__), (complex, lambda x: complex(x.real, x.imag)),
    (str, str.__str__), (bytes, lambda x: bytes.__getitem__(x, slice(None))),
    (tuple, lambda x: tuple.__getitem__(x, slice(None))), (list, list.copy),
    (dict, dict.copy), (set, set.copy), (frozenset, frozenset.copy),
)


class WireError(ValueError):
    """A message that is not well-formed plain data (or exceeds a limit)."""


class NotPlain(TypeError):
    """An object that cannot cross as plain data (and no reference was allowed)."""


def dumps(obj: Any, other: Callable[[Any], tuple[int, str]]) -> bytes:
    """Encode `obj`. `other(x)` is asked for (id, type name) of any object that is not plain
    data; it raises `NotPlain` where references are not allowed. Containers nested deeper
    than `MAX_DEPTH`, or a container that contains itself, raise `NotPlain`."""
    out: list[bytes] = []
    _dump(obj, out, other, 0)
    return b"".join(out)


def _dump(x: Any, out: list[bytes], other: Callable[[Any], tuple[int, str]], depth: int) -> None:
    t = type(x)
    if x is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if x else b"F")
    elif t is int:
        if _I64_MIN <= x <= _I64_MAX:
            out.append(b"i" + _I64.pack(x))
        else:
            raw = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
            out.append(b"I" + U32.pack(len(raw)) + raw)
    elif t is str:
        raw = x.encode("utf-8", "surrogatepass")
        out.append(b"s" + U32.pack(len(raw)) + raw)
    elif t is float:
        out.append(b"f" + _F64.pack(x))
    elif t in _SEQ_TAGS:
        if depth >= MAX_DEPTH:
            raise NotPlain(f"containers nested deeper than {MAX_DEPTH} levels (or a "
                           "container that contains itself)")
        out.append(_SEQ_TAGS[t] + U32.pack(len(x)))
        for item in x:
            _dump(item, out, other, depth + 1)
    elif t is dict:
        if depth >= MAX_DEPTH:
            raise NotPlain(f"containers nested deeper than {MAX_DEPTH} levels (or a "
                           "container that contains itself)")
        out.append(b"d" + U32.pack(len(x)))
        for k, v in x.items():
            _dump(k, out, other, depth + 1)
            _dump(v, out, other, depth + 1)
    elif t is bytes:
        out.append(b"b" + U32.pack(len(x)) + x)
    elif t is complex:
        out.append(b"c" + _C128.pack(x.real, x.imag))
    else:
        for base, convert in _BASES:
            if isinstance(x, base):
                _dump(convert(x), out, other, depth)
                return
        ref, name = other(x)
        raw = name.encode("utf-8", "replace")[:200]
        out.append(b"r" + U32.pack(ref) + _U16.pack(len(raw)) + raw)


def loads(buf: bytes, ref: Callable[[int, str], Any], off: int = 0) -> tuple[Any, int]:
    """Decode one value from `buf` at `off`; returns (value, next offset). `ref(id, name)`
    turns a reference into an object. Raises WireError on malformed input."""
    state = [0]  # values decoded so far
    try:
        return _load(buf, off, ref, 0, state)
    except WireError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, TypeError, OverflowError,
            MemoryError, RecursionError) as e:
        raise WireError(f"malformed value: {type(e).__name__}: {e}") from None


def _load(buf: bytes, off: int, ref: Callable[[int, str], Any], depth: int,
          state: list[int]) -> tuple[Any, int]:
    state[0] += 1
    if state[0] > MAX_ITEMS:
        raise WireError(f"more than {MAX_ITEMS} values in one message")
    tag = buf[off:off + 1]
    off += 1
    if tag == b"i":
        return _I64.unpack_from(buf, off)[0], off + 8
    if tag == b"s":
        n = _length(buf, off)
        return buf[off + 4:off + 4 + n].decode("utf-8", "surrogatepass"), off + 4 + n
    if tag == b"N":
        return None, off
    if tag == b"T":
        return True, off
    if tag == b"F":
        return False, off
    if tag == b"f":
        return _F64.unpack_from(buf, off)[0], off + 8
    if tag in (b"l", b"t", b"e", b"z", b"d"):
        if depth >= MAX_DEPTH:
            raise WireError(f"containers nested deeper than {MAX_DEPTH} levels")
        n = U32.unpack_from(buf, off)[0]
        off += 4
        if n > len(buf) - off:  # every value takes at least one byte
            raise WireError("a container announces more items than the message holds")
        if tag == b"d":
            d = {}
            for _ in range(n):
                k, off = _load(buf, off, ref, depth + 1, state)
                v, off = _load(buf, off, ref, depth + 1, state)
                d[k] = v  # TypeError (unhashable key) -> WireError
            return d, off
        items = []
        for _ in range(n):
            v, off = _load(buf, off, ref, depth + 1, state)
            items.append(v)
        if tag == b"l":
            return items, off
        if tag == b"t":
            return tuple(items), off
        return (set(items) if tag == b"e" else frozenset(items)), off
    if tag == b"b":
        n = _length(buf, off)
        return buf[off + 4:off + 4 + n], off + 4 + n
    if tag == b"I":
        n = _length(buf, off)
        return int.from_bytes(buf[off + 4:off + 4 + n], "little", signed=True), off + 4 + n
    if tag == b"c":
        re_, im = _C128.unpack_from(buf, off)
        return complex(re_, im), off + 16
    if tag == b"r":
        rid = U32.unpack_from(buf, off)[0]
        n = _U16.unpack_from(buf, off + 4)[0]
        if off + 6 + n > len(buf):
            raise WireError("truncated reference")
        name = buf[off + 6:off + 6 + n].decode("utf-8", "replace")
        return ref(rid, name), off + 6 + n
    raise WireError(f"unknown tag {tag!r} at offset {off - 1}")


# ------------------------------------------------------------------------------ marshal
# What the program's side sends when a reply is plain data only: marshal version 2 (written
# in C, so cheap there), read back here by a decoder of our own that accepts only the plain
# types: no code objects, no references, nothing else that marshal.loads would build.
_I32 = struct.Struct("<i")
_MARSHAL_SEQ = {ord("("): tuple, ord("["): list, ord("<"): set, ord(">"): frozenset}


def loads_marshal(buf: bytes, off: int = 0) -> tuple[Any, int]:
    """Decode one plain value written by marshal.dumps(value, 2); WireError otherwise."""
    state = [0]
    try:
        return _load_m(buf, off, 0, state)
    except WireError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, TypeError, OverflowError,
            MemoryError, RecursionError) as e:
        raise WireError(f"malformed value: {type(e).__name__}: {e}") from None


def _load_m(buf: bytes, off: int, depth: int, state: list[int]) -> tuple[Any, int]:
    state[0] += 1
    if state[0] > MAX_ITEMS:
        raise WireError(f"more than {MAX_ITEMS} values in one message")
    tag = buf[off]
    off += 1
    if tag == 105:  # i
        return _I32.unpack_from(buf, off)[0], off + 4
    if tag == 117 or tag == 115:  # u str, s bytes
        n = _I32.unpack_from(buf, off)[0]
        if n < 0 or off + 4 + n > len(buf):
            raise WireError("a string runs past the end of the message")
        raw = buf[off + 4:off + 4 + n]
        return (raw.decode("utf-8", "surrogatepass") if tag == 117 else raw), off + 4 + n
    if tag == 78:  # N
        return None, off
    if tag == 84:  # T
        return True, off
    if tag == 70:  # F
        return False, off
    if tag == 103:  # g
        return _F64.unpack_from(buf, off)[0], off + 8
    if tag in _MARSHAL_SEQ or tag == 123:  # ( [ < > {
        if depth >= MAX_DEPTH:
            raise WireError(f"containers nested deeper than {MAX_DEPTH} levels")
        if tag == 123:
            d = {}
            while True:
                if off >= len(buf):
                    raise WireError("a dict runs past the end of the message")
                if buf[off] == 48:  # 0: end of the dict
                    return d, off + 1
                k, off = _load_m(buf, off, depth + 1, state)
                v, off = _load_m(buf, off, depth + 1, state)
                d[k] = v
        n = _I32.unpack_from(buf, off)[0]
        off += 4
        if n < 0 or n > len(buf) - off:
            raise WireError("a container announces more items than the message holds")
        items = []
        for _ in range(n):
            v, off = _load_m(buf, off, depth + 1, state)
            items.append(v)
        kind = _MARSHAL_SEQ[tag]
        return (items if kind is list else kind(items)), off
    if tag == 108:  # l: 15-bit digits, their count's sign is the number's
        n = _I32.unpack_from(buf, off)[0]
        off += 4
        size = abs(n)
        if off + 2 * size > len(buf):
            raise WireError("a long integer runs past the end of the message")
        value = 0
        for i in range(size - 1, -1, -1):
            digit = buf[off + 2 * i] | buf[off + 2 * i + 1] << 8
            if digit >= 1 << 15:
                raise WireError("a long integer digit is out of range")
            value = (value << 15) | digit
        return (-value if n < 0 else value), off + 2 * size
    if tag == 121:  # y
        re_, im = _C128.unpack_from(buf, off)
        return complex(re_, im), off + 16
    raise WireError(f"type code {tag!r} is not plain data")


def _length(buf: bytes, off: int) -> int:
    n = U32.unpack_from(buf, off)[0]
    if off + 4 + n > len(buf):
        raise WireError("a string or bytes value runs past the end of the message")
    return n


# ------------------------------------------------------------------------------ framing
def frame(payload: bytes) -> bytes:
    """A marker byte, the u32 length, then the payload."""
    return _MARK + U32.pack(len(payload)) + payload


def send(fd: int, data: bytes) -> None:
    """Write `data` (one or more frames) in full."""
    view = memoryview(data)
    while view:
        view = view[_write(fd, view):]


class Reader:
    """Frames from a pipe, read in large chunks: a batch of replies costs one read."""

    def __init__(self, fd: int, max_bytes: int) -> None:
        self.fd, self.max_bytes = fd, max_bytes
        self.buf = bytearray()
        self.pos = 0

    def _fill(self, n: int) -> bool:
        """At least n unread bytes buffered; False at end of file."""
        while len(self.buf) - self.pos < n:
            if self.pos:
                del self.buf[:self.pos]
                self.pos = 0
            chunk = _read(self.fd, max(65536, n - len(self.buf)))
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv(self) -> bytes | None:
        """One frame, or None at end of file. A frame without its marker (stray bytes on
        the channel), longer than `max_bytes`, or cut short raises WireError."""
        if not self._fill(5):
            if len(self.buf) > self.pos:
                raise WireError("the message was cut short (the other side closed the channel)")
            return None
        p = self.pos
        if self.buf[p] != _MARK[0]:
            raise WireError("stray bytes on the channel (not a frame)")
        n = U32.unpack_from(self.buf, p + 1)[0]
        if n > self.max_bytes:
            raise WireError(f"a message of {n} bytes exceeds the limit of {self.max_bytes} "
                            "bytes")
        if not self._fill(5 + n):
            raise WireError("the message was cut short (the other side closed the channel)")
        p = self.pos
        body = bytes(self.buf[p + 5:p + 5 + n])
        self.pos = p + 5 + n
        return body

    def pending(self) -> bool:
        """Unread bytes already buffered."""
        return len(self.buf) > self.pos
