"""How a job travels: from the pool to the worker, and from the worker to the program's
process and to the evaluator. Plain structs and length-prefixed items instead of JSON where
the untrusted process reads them: every object a fresh process allocates costs it page
faults.

A test (or the trusted setup) travels as b"M" + 8-byte id + marshalled code, compiled once
per pool where the pool runs (tests are trusted; programs are never compiled outside their
sandbox), or as b"S" + source when it does not compile (the receiver then reports that).
The id lets the long-lived evaluator keep each loaded code object instead of loading it
again for every sample of the same problem.

Program's process:  limits (`LIMITS`) + mode + [nonce, in-process only] + items
    proxy:       program, program setup, entry names ("\\n"-joined)
    in-process:  program, program setup, entry names, setup, tests...
Evaluator:          nonce + items: header {"names", "max_bytes"} (marshal), setup, plan, tests
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Sequence

TYPE_CHECKING = False  # typing is not imported at run time: every process is leaner
if TYPE_CHECKING:
    from typing import Any


PROXY, IN_PROCESS = b"p", b"i"
LIMIT_FIELDS = ("cpu_limit_s", "memory_mb", "max_processes", "file_size_mb", "open_files",
                "max_message_mb")
LIMITS = struct.Struct("=6I")
_LEN = struct.Struct(">I")
NONCE_BYTES = 16


def compile_item(source: str, label: str, key: int) -> tuple[bytes, Any]:
    """(item, code object or None) for a trusted piece of test code."""
    try:
        code = compile(source, label, "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return b"S" + source.encode("utf-8", "surrogatepass"), None
    return b"M" + key.to_bytes(8, "little") + marshal.dumps(code), code


def items(parts: Sequence[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(p)) + p for p in parts)


def split_items(data: bytes, off: int = 0) -> list[bytes]:
    out = []
    while off < len(data):
        (n,) = _LEN.unpack_from(data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def program_payload(program: str, program_setup: str, names: Sequence[str], setup: bytes,
                    tests: Sequence[bytes], in_process: bool) -> bytes:
    parts = [program.encode("utf-8", "surrogatepass"),
             program_setup.encode("utf-8", "surrogatepass"), "\n".join(names).encode()]
    if in_process:
        parts += [setup, *tests]
    return items(parts)


def encode_limits(limits: dict[str, Any]) -> bytes:
    return LIMITS.pack(*(int(limits[f]) for f in LIMIT_FIELDS))


def decode_program_job(data: bytes) -> tuple[tuple[int, ...], bytes, bytes, list[bytes]]:
    """(limits, mode, nonce (in-process) or b"", items)."""
    limits = LIMITS.unpack_from(data, 0)
    off = LIMITS.size
    mode = data[off:off + 1]
    off += 1
    nonce = b""
    if mode == IN_PROCESS:
        nonce = data[off:off + NONCE_BYTES]
        off += NONCE_BYTES
    return limits, mode, nonce, split_items(data, off)

