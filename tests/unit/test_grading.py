"""The sandbox's graded mode: the tests run in a trusted grader process and the program, in the
sandbox, only answers calls (metis_core/grading.py). Run in each isolation mode this machine has."""

import secrets

import pytest

from metis_core.sandbox import SandboxLimits, run_tests
from metis_core.sandbox import TestsResult as Result  # not "Test*": pytest would collect it
from tests.unit.conftest import FAST, assert_no_strays, run_checked

pytestmark = pytest.mark.serial  # assert_no_strays looks at every process


def _graded(program: str, tests: list[str], mode: str, limits: SandboxLimits = FAST) -> Result:
    return run_checked(program, tests, mode, limits, entry_point="f")


VALUES = (
    "[None, True, False, 0, -7, 10**400, 1.5, -0.0, float('inf'), float('-inf'), 2j, 'é\\n',"
    " b'\\x00', (1, (2,)), {(1, 'a'): [frozenset({3})], 'k': {4.5}}, [], (), {}, set()]"
)


def test_graded_results_come_back_as_plain_builtin_values(mode: str) -> None:
    program = (
        f"import math\ndef f(kind=None):\n    return {VALUES} if kind is None else float('nan')\n"
    )
    tests = [
        f"assert f() == {VALUES}",
        "r = f(); assert [type(x) for x in r] == [type(x) for x in " + VALUES + "]",
        "assert math.isnan(f(kind=1)) and type(f(kind=1)) is float",
        "assert f() != [None]",
    ]
    r = _graded(program, tests, mode)
    assert r.passed == [True] * 4, r.reason


def test_graded_calls_helpers_keep_output_and_reject_odd_results(mode: str) -> None:
    program = (
        "def helper(x):\n    return x + 1\n"
        "def f(x):\n    print('called', x)\n"
        "    if x == 'gen':\n        return (i for i in range(3))\n"
        "    if x == 'eq':\n        class A:\n            __eq__ = lambda s, o: True\n        return A()\n"
        "    if x == 'loop':\n        a = []\n        a.append(a)\n        return a\n"
        "    return helper(x)\n"
    )
    tests = ["assert f(1) == 2 and helper(2) == 3", "f('gen')", "assert f('eq') == 1", "f('loop')"]
    r = _graded(program, tests, mode)
    assert r.passed == [True, False, False, False]
    assert (
        r.reason
        == "test 1 failed: CandidateError: f returned an unsupported value: unsupported type generator"
    )
    assert r.stdout == "called 1\ncalled gen\ncalled eq\ncalled loop\n"


def test_graded_exceptions_reach_the_tests(mode: str) -> None:
    program = (
        "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n"
        "    if x == 0:\n        class Oops(Exception): pass\n        raise Oops('zero')\n"
        "    return 1 / (x - 1)\n"
    )
    tests = [
        "try:\n    f(-1)\nexcept ValueError as e:\n    assert str(e) == 'negative'\nelse:\n    assert False",
        "try:\n    f(0)\nexcept Exception as e:\n    assert 'Oops: zero' in str(e)\nelse:\n    assert False",
        "f(1)",
        "assert f(3) == 0.5",
    ]
    r = _graded(program, tests, mode)
    assert r.passed == [True, True, False, True], r.reason
    assert r.reason == "test 2 failed: ZeroDivisionError: division by zero"


def test_graded_program_problems_fail_every_test(mode: str) -> None:
    r = _graded("def g(x):\n    return x\n", ["assert f(1) == 1"], mode)
    assert r.passed == [False] and r.reason == "the program defines no function 'f'"
    r = _graded("def f(x):\n    return x\nraise ValueError('boom')\n", ["assert f(1) == 1"], mode)
    assert r.passed == [False] and r.reason == "program raised ValueError: boom"
    r = _graded("def f(x:\n", ["assert f(1) == 1"], mode)
    assert r.passed == [False] and r.reason is not None and r.reason.startswith("SyntaxError")


def test_graded_hung_call_fails_the_rest_and_leaves_nothing(mode: str) -> None:
    limits = SandboxLimits(cpu_seconds=30, wall_seconds=2)
    program = "def f(x):\n    while x == 2:\n        pass\n    return x\n"
    r = _graded(program, ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"], mode, limits)
    assert r.passed == [True, False, False]
    assert r.reason == "timed out after 2 s (wall)"
    r = _graded("def f(x):\n    return x\n", ["assert f(1) == 1", "while True: pass"], mode, limits)
    assert r.passed == [True, False] and r.reason == "timed out after 2 s (wall)"
    assert_no_strays()


def test_graded_program_never_sees_the_tests(mode: str) -> None:
    secret = secrets.token_hex(8)
    program = (
        "import gc, os, sys\n"
        "def f(x):\n"
        "    s = SECRET\n"
        "    items = lambda o: o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()\n"
        "    seen = [1 for o in gc.get_objects() for v in items(o) if isinstance(v, str) and s in v]\n"
        "    for p in os.listdir('/proc'):\n"
        "        for part in ('cmdline', 'environ', 'fd/0'):\n"
        "            try:\n"
        "                seen += [p] if SECRET in open('/proc/%s/%s' % (p, part), errors='replace').read() else []\n"
        "            except Exception:\n"
        "                pass\n"
        "    print('seen', seen)\n"
        "    return x\n"
    ).replace("SECRET", f"''.join([{secret[:6]!r}, {secret[6:]!r}])")  # not a folded constant
    tests = [f"assert f(1) != {secret!r}"]
    r = _graded(program, tests, mode, SandboxLimits(wall_seconds=10))
    assert r.passed == [True], r.reason
    assert r.stdout == "seen []\n"
    # control: with the tests in the program's process (no entry point) the probe finds them
    shared = run_tests(program, tests, SandboxLimits(wall_seconds=10), mode=mode)
    assert shared.passed == [True] and shared.stdout.startswith("seen [1")
