"""The process boundary between the tests and the program: what crosses, as what, and what
an honest program can still rely on (mutating an argument, raising, returning its own
objects for the tests to hand back). Also the codec's robustness to hostile bytes."""

from __future__ import annotations

import marshal
import math
import random

import pytest

import sandbox
from sandbox import Limits, Pool, Status, Suite, _wire
from sandbox._plan import static_plan


@pytest.fixture(scope="module")
def pool():
    with Pool(2, limits=Limits(timeout_s=5.0)) as p:
        yield p


def run(pool, program, tests, **kw):
    return pool.submit(program, Suite(tuple(tests), **kw)).result()


# ------------------------------------------------------------------------------ codec
def _no_refs(obj):
    raise _wire.NotPlain(type(obj).__name__)


def _loads(buf):
    value, end = _wire.loads(buf, lambda i, n: pytest.fail("no references here"))
    assert end == len(buf)
    return value


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**63 - 1, -2**63, 2**200, -(3**100), 1.5, -0.0, math.inf,
    1 + 2j, "", "héllo \ud800", b"\x00\xff", [1, [2, [3]]], (1, "a", None), {1, 2},
    frozenset({"x"}), {"a": [1], (1, 2): {3: b"z"}}, [(), [], {}, set()],
])
def test_plain_values_round_trip_exactly(value):
    back = _loads(_wire.dumps(value, _no_refs))
    assert back == value and type(back) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)


@pytest.mark.parametrize("value", [
    None, True, 2**31, -(2**31) - 1, 2**200, -(3**100), -0.0, 1 - 2j, b"\x00", "é\ud800",
    (1, [2, {3: frozenset({4})}]), {(1, 2): {b"x"}},
])
def test_marshal_replies_are_read_back_exactly_by_the_evaluators_decoder(value):
    buf = marshal.dumps(value, 2)
    back, end = _wire.loads_marshal(buf)
    assert back == value and type(back) is type(value) and end == len(buf)


@pytest.mark.parametrize("buf", [
    marshal.dumps(compile("1", "<x>", "eval"), 2), marshal.dumps(..., 2), b"r\x00\x00\x00\x00",
    b"(\xff\xff\xff\x7f", b"l\x01\x00\x00\x00\xff\xff", b"u\x05\x00\x00\x00ab",
    b"<\x01\x00\x00\x00[\x00\x00\x00\x00", b"[\x01\x00\x00\x00" * 200 + b"N",
])
def test_the_evaluator_reads_no_marshal_type_but_plain_data(buf):
    with pytest.raises(_wire.WireError):
        _wire.loads_marshal(buf)


def test_nan_and_subclasses_cross_as_their_base_values():
    assert math.isnan(_loads(_wire.dumps(math.nan, _no_refs)))

    class Rigged(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__

    back = _loads(_wire.dumps([Rigged(3)], _no_refs))
    assert back == [3] and type(back[0]) is int and back[0] != 4


def test_other_objects_and_cycles_are_not_plain():
    with pytest.raises(_wire.NotPlain):
        _wire.dumps(object(), _no_refs)
    loop: list = []
    loop.append(loop)
    with pytest.raises(_wire.NotPlain, match="nested deeper"):
        _wire.dumps(loop, _no_refs)


@pytest.mark.parametrize("buf", [
    b"", b"i\x00", b"s\xff\xff\xff\x7fabc", b"l\x05\x00\x00\x00N", b"?", b"e\x01\x00\x00\x00l"
    b"\x00\x00\x00\x00", b"I\x09\x00\x00\x00\x01", b"l\x01\x00\x00\x00" * 200 + b"N",
])
def test_malformed_input_is_a_wire_error(buf):
    with pytest.raises(_wire.WireError):
        _wire.loads(buf, _no_refs)


def test_random_bytes_only_ever_raise_wire_error():
    rng = random.Random(0)
    values = ([1, "a", {2: (3.0, b"x")}], {1, 2}, 2**70)
    for encode, decode in ((lambda v: _wire.dumps(v, _no_refs), lambda b: _wire.loads(b, _no_refs)),
                           (lambda v: marshal.dumps(v, 2), _wire.loads_marshal)):
        seeds = [encode(v) for v in values]
        for _ in range(2000):
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            try:
                decode(bytes(buf))
            except _wire.WireError:
                pass


# ------------------------------------------------------------------------------ through the pool
def test_results_arrive_as_fresh_builtins_of_the_same_value(pool):
    prog = ("import collections, enum\nclass C(enum.IntEnum):\n    A = 3\n"
            "P = collections.namedtuple('P', 'x y')\n"
            "def f():\n"
            "    return (P(1, 2), collections.Counter('aab'), C.A, True, None, 1.5, b'z')\n")
    r = run(pool, prog, ["p, c, e, t, n, x, b = f()",
                         "assert p == (1, 2) and type(p) is tuple",
                         "assert c == {'a': 2, 'b': 1} and type(c) is dict",
                         "assert e == 3 and type(e) is int",
                         "assert t is True and n is None and x == 1.5 and b == b'z'"])
    assert r.passed, r
    assert r.calls == 1 and not r.in_process


def test_arguments_mutated_in_place_come_back_but_results_are_copies(pool):
    prog = ("def sort_in_place(xs):\n    xs.sort()\n"
            "def add_key(d):\n    d['new'] = 1\n"
            "def add_item(s):\n    s.add(9)\n"
            "def same(x):\n    return x\n")
    r = run(pool, prog, ["a = [3, 1, 2]\nassert sort_in_place(a) is None\nassert a == [1, 2, 3]",
                         "d = {}\nadd_key(d)\nassert d == {'new': 1}",
                         "s = set()\nadd_item(s)\nassert s == {9}",
                         "x = [1]\nassert same(x) == x and same(x) is not x"])
    assert r.passed, r


def test_exceptions_cross_as_the_builtin_type_with_their_arguments(pool):
    prog = ("class Custom(Exception):\n    pass\n"
            "def f(x):\n    if x < 0:\n        raise ValueError('negative', x)\n"
            "    raise Custom('mine')\n")
    r = run(pool, prog, ["try:\n    f(-1)\nexcept ValueError as e:\n    assert e.args == "
                         "('negative', -1)\nelse:\n    assert False",
                         "try:\n    f(1)\nexcept Exception as e:\n    assert 'Custom' in str(e)"])
    assert r.passed, r
    r = run(pool, "def f():\n    raise KeyError('k')\n", ["f()"])
    assert r.status is Status.ERROR and "KeyError" in r.detail
    assert "raised in the program's process" in r.stderr


def test_the_programs_objects_cross_as_references_to_pass_back(pool):
    prog = ("class Node:\n    def __init__(self, v, nxt=None):\n        self.v, self.nxt = v, nxt\n"
            "def make(n):\n    head = None\n    for v in range(n):\n        head = Node(v, head)\n"
            "    return head\n"
            "def length(node):\n    return 0 if node is None else 1 + length(node.nxt)\n"
            "def adder(k):\n    return lambda x: x + k\n")
    r = run(pool, prog, ["assert length(make(4)) == 4", "assert adder(2)(3) == 5",
                         "assert length(Node(1, Node(2))) == 2"])
    assert r.passed, r


def test_using_a_programs_object_as_data_fails_even_if_the_test_swallows_it(pool):
    r = run(pool, "def gen(n):\n    return (i for i in range(n))\n",
            ["assert list(gen(3)) == [0, 1, 2]"])
    assert r.status is Status.ERROR and "generator" in r.detail and "not plain data" in r.detail
    prog = "class T:\n    def __bool__(self):\n        return True\n\ndef f():\n    return T()\n"
    r = run(pool, prog, ["try:\n    assert f()\nexcept BaseException:\n    pass"])
    assert r.status is Status.ERROR and "bool" in r.detail


def test_program_setup_builds_inputs_from_the_programs_classes(pool):
    prog = ("class Box:\n    def __init__(self, v):\n        self.v = v\n"
            "def unbox(b):\n    return b.v\n")
    r = run(pool, prog, ["assert unbox(box) == 7"], program_setup="box = Box(7)")
    assert r.passed, r


def test_names_resolve_in_the_tests_own_namespace(pool):
    # entry points are what the tests read and do not bind; builtins stay the evaluator's
    assert sandbox.entry_points_of(["assert sorted(f(x)) == y", "x = 1"]) == ["f", "y"]
    assert sandbox.entry_points_of(["assert sum(1, 2) == 3"], defined=["sum"]) == ["sum"]
    prog = "import math\nmath.sqrt = lambda v: 2.0\ndef f(x):\n    return x\n"
    r = run(pool, prog, ["assert math.sqrt(f(16)) == 4.0"])  # math: the evaluator's own copy
    assert r.passed, r
    r = run(pool, "def sum(a, b):\n    return a * b\n", ["assert sum(2, 3) == 6"],
            entry_points=("sum",))
    assert r.passed, r


def test_keyword_arguments_and_output_of_both_sides(pool):
    prog = "def f(x, scale=1):\n    print('from the program')\n    return x * scale\n"
    r = run(pool, prog, ["print('from the test')\nassert f(2, scale=3) == 6"])
    assert r.passed, r
    assert r.stdout == "from the program\nfrom the test\n"


@pytest.mark.parametrize("body,status", [
    ("import os\n    os._exit(0)", Status.EXITED),
    ("return bytearray(8 << 30)", Status.MEMORY),
    ("raise SystemExit(0)", Status.EXITED),
    ("import ctypes\n    ctypes.string_at(0)", Status.KILLED),
    ("while True:\n        pass", Status.TIMEOUT),
    ("return [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
     "[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
     "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", Status.ERROR),
])
def test_a_call_that_never_returns_normally_is_a_verdict(pool, body, status):
    r = pool.submit(f"def f():\n    {body}\n", ["f()"], Limits(timeout_s=1.0)).result()
    assert r.status is status and not r.passed, r


def test_a_result_above_the_message_limit_fails_with_the_reason(pool):
    r = pool.submit("def f():\n    return 'x' * (3 << 20)\n", ["f()"],
                    Limits(timeout_s=5, max_message_mb=1)).result()
    assert r.status is Status.ERROR and "exceeds the limit" in r.detail


def test_planned_calls_are_literal_calls_that_reveal_no_earlier_answer():
    def plan(tests, names=("f",)):
        return [marshal.loads(c[1:]) for c in static_plan(tests, names)]

    assert plan(["assert f(3) == 6", "assert f(4) == 8"]) == [("f", (3,), {}), ("f", (4,), {})]
    assert plan(["assert f(3) == 6", "assert f(6) == 12"]) == [("f", (3,), {})]  # 6 would tell
    assert plan(["assert [f(3), f(6)] == [6, 12]"]) == [("f", (3,), {})]
    assert plan(["x = f(1)", "assert f(x) == 2"]) == [("f", (1,), {})]  # computed: stop
    assert plan(["for i in range(3):\n    assert f(i) == i"]) == []
    assert plan(["def check(c):\n    assert c([1, 2]) == 3\n", "check(f)"]) == [
        ("f", ([1, 2],), {})]


_PLAN_TESTS = ["assert f(1) == 2", "assert f(3) == 6", "assert f(5) == 10", "assert f(7) == 14"]


def test_planned_calls_go_out_ahead_without_changing_verdicts(pool):
    assert len(static_plan(_PLAN_TESTS, ["f"])) == 4
    r = run(pool, "def f(x):\n    return 2 * x\n", _PLAN_TESTS)
    assert r.passed and r.calls == 4
    # a program that fails on the third call fails there, as without a plan
    r = run(pool, "def f(x):\n    return 2 * x + (x == 5)\n", _PLAN_TESTS)
    assert r.status is Status.FAILED and r.failed_test == 2 and r.calls == 3
    # wrong on the first call, looping on a later one: still fails fast, not at the limit
    r = run(pool, "def f(x):\n    while x == 5:\n        pass\n    return x\n", _PLAN_TESTS)
    assert r.status is Status.FAILED and r.calls == 1 and r.wall_s < 2
    # tests whose calls differ from the plan still get the right answers
    r = run(pool, "def f(x):\n    return 2 * x\n", ["assert f(1) == 2", "y = f(1)",
                                                     "assert f(y) == 4"])
    assert r.passed and r.calls == 3


def test_a_program_reading_the_plan_learns_no_earlier_answer(pool, monkeypatch):
    """The plan is in the program's process: a program can read it (here from the serving
    loop's frame). It only ever shows literal inputs that no earlier check compares with."""
    tests = ["assert f(3) == 6", "assert f(6) == 12", "assert f(12) == 24", "assert f(24) != 1"]
    peek = ("import marshal, sys\n"
            "def f(x):\n"
            "    fr = sys._getframe(1)\n"
            "    while fr is not None and fr.f_locals.get('msg', b'')[:1] != b'S':\n"
            "        fr = fr.f_back\n"
            "    msg, off, calls = (fr.f_locals['msg'] if fr else b'S'), 1, []\n"
            "    while off + 5 <= len(msg):\n"
            "        n = int.from_bytes(msg[off + 1:off + 5], 'little')\n"
            "        calls.append(marshal.loads(msg[off + 6:off + 5 + n])[1][0])\n"
            "        off += 5 + n\n"
            "    later = calls[calls.index(x) + 1:] if x in calls else []\n"
            "    return later[0] if later else 0\n")
    assert not run(pool, peek, tests).passed
    assert run(pool, "def f(x):\n    return 2 * x\n", tests).passed
    # what it would take: a plan showing every call lets that program pass
    from sandbox import _compile

    leaky = b"".join(_wire.frame(b"c" + marshal.dumps(("f", (x,), {}), 2))
                     for x in (3, 6, 12, 24))
    monkeypatch.setattr(_compile.Compiler, "plan", lambda self, suite, names: leaky)
    assert run(pool, peek, tests).passed


@pytest.mark.parametrize("test,status", [("while True:\n    pass", Status.TIMEOUT),
                                         ("x = bytearray(8 << 30)", Status.MEMORY)])
def test_the_evaluator_recovers_from_a_test_that_never_ends_or_exhausts_it(pool, test, status):
    prog = "def f(x):\n    return 2 * x\n"
    r = pool.submit(prog, [test], Limits(timeout_s=1.0)).result()
    assert r.status is status, r
    assert all(run(pool, prog, ["assert f(2) == 4"]).passed for _ in range(3))
