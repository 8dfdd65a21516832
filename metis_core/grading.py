"""Grade a candidate program where it cannot reach the verdict (`run_tests(..., entry_point=)`).

Three processes: the host (`run_graded`), the sandboxed candidate (`metis_core.sandbox`'s launcher
plus `serve`) and a trusted grader (`grader_main`: a plain `python -I -S` child, not sandboxed, killed
at the wall-clock deadline). The candidate receives only its program, then one call request per
line on a request pipe: a function name and arguments. It calls the function and writes the result
to a reply pipe, encoded as plain values with their types (`enc`/`dec`; the three are real code in
metis_core/grading_programs.py, sent as source). The grader holds the tests:
it binds each top-level function name of the program to a proxy that sends a request and decodes
the reply into fresh builtin objects (None, bool, int, float incl. nan/inf, complex, str, bytes,
list, tuple, dict, set, frozenset, nested), so the tests' own `==` and asserts compare trusted
objects. A reply is only a claim of what the function returned: the candidate never sees the
tests or the expected values, and nothing it writes can mark a test passed. An unsupported
result (a custom class, a generator, ...) fails that call; an exception in the candidate is
raised in the grader (as the builtin class of that name if there is one, else `CandidateError`),
so tests that expect exceptions still work. Arguments are copies: in-place changes the candidate
makes to them are not seen by the tests.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from metis_core import grading_programs as programs
from metis_core import sandbox as sb
from metis_core.sandbox_verdict import ended as worker_ended
from metis_core.sandbox_verdict import split_lines

__all__ = ["SAFE_IMPORTS", "program_names", "run_graded"]

REPLY_BYTES = 8 * 2**20  # the largest encoded result of one call
# modules the grader imports too when the program does (tests may use them, e.g. math.isclose);
# anything else a candidate imports is not imported in the unsandboxed grader
SAFE_IMPORTS = frozenset(
    [
        "math",
        "cmath",
        "re",
        "string",
        "itertools",
        "functools",
        "collections",
        "typing",
        "heapq",
        "bisect",
        "fractions",
        "decimal",
        "statistics",
        "operator",
        "copy",
        "datetime",
        "json",
        "random",
        "hashlib",
        "textwrap",
        "unicodedata",
        "array",
        "struct",
        "dataclasses",
        "enum",
        "abc",
        "numbers",
    ]
)


def _source(*parts: object) -> str:
    return "".join(inspect.getsource(part) + "\n" for part in parts)  # type: ignore[arg-type]


_SERVE = _source(programs.enc, programs.dec, programs.serve)
"""Appended to the sandbox launcher in graded mode: the candidate's side."""
_GRADER = (
    "# metis-grader\nimport builtins, json, os, sys\n"
    + _source(programs.enc, programs.dec, programs.CandidateError, programs.grader_main)
    + "grader_main()\n"
)
"""The trusted grader's `python -c` source."""


def program_names(program: str, entry_point: str) -> tuple[list[str], list[list[str]]]:
    """The names the grader binds to candidate proxies (the entry point and every top-level def)
    and the program's imports of `SAFE_IMPORTS` modules as [module to import, module to bind,
    attribute or "", alias]: the grader repeats those (tests may use them, e.g. `math`)."""
    names, imports = {entry_point}, []
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                bound = [a.name, a.name, "", a.asname] if a.asname else [a.name, top, "", top]
                imports += [bound] if top in SAFE_IMPORTS else []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            m = node.module
            if m.split(".")[0] in SAFE_IMPORTS:
                imports += [[m, m, a.name, a.asname or a.name] for a in node.names if a.name != "*"]
    return sorted(n for n in names if n), [i for i in imports if i[3] not in names]


def _read(stream: IO[bytes], into: bytearray) -> None:
    with contextlib.suppress(OSError, ValueError):
        while len(into) < 2**22 and (data := stream.read1(1 << 16)):  # type: ignore[attr-defined]
            into += data


def run_graded(
    program: str, tests: list[str], entry_point: str, limits: sb.SandboxLimits, mode: str
) -> sb.TestsResult:
    """`run_tests` with an entry point (see the module docstring)."""
    start = time.monotonic()
    deadline = start + limits.wall_seconds
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    opened: list[int] = [req_r, req_w, resp_r, resp_w]
    proc: subprocess.Popen[bytes] | None = None
    grader: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    work, nonce, raw, why, verdict_bytes = None, "", b"", None, bytearray()
    tree: sb.TreeLimits | None = None
    try:
        extra = {"program": program, "entry": entry_point, "req": req_r, "resp": resp_w}
        proc, work, cfg, tree = sb._start(mode, limits, extra, (req_r, resp_w), _SERVE)
        nonce = str(cfg["nonce"])
        data = json.dumps(cfg).encode()
        threading.Thread(target=sb._feed, args=(proc.stdin, data), daemon=True).start()
        names, imports = program_names(program, entry_point)
        job = {"req": req_w, "resp": resp_r, "tests": tests,
               "names": names, "imports": imports, "reply_bytes": REPLY_BYTES}  # fmt: skip
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        grader = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", _GRADER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/", env=env,
                                  pass_fds=(req_w, resp_r), start_new_session=True)  # fmt: skip
        for fd in opened:
            os.close(fd)
        opened = []
        threading.Thread(
            target=sb._feed, args=(grader.stdin, json.dumps(job).encode()), daemon=True
        ).start()
        assert grader.stdout is not None
        reader = threading.Thread(target=_read, args=(grader.stdout, verdict_bytes), daemon=True)
        reader.start()
        raw, why = sb._collect(
            proc, deadline, limits.output_bytes + 4096, tree, limits.cpu_seconds + 1
        )
        reader.join(max(0.0, deadline - time.monotonic()))
        if reader.is_alive() and why is None:
            why = "wall"  # a test hung in the grader
    finally:
        for fd in opened:
            os.close(fd)
        for child in (proc, grader):  # _collect has already killed and reaped the candidate
            if child is not None and child.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if reader is not None:
            reader.join(1.0)
        if work is not None:
            sb._cleanup(work, tree)
    return _decide(raw, why, nonce, bytes(verdict_bytes), len(tests), limits)


def _decide(
    raw: bytes, why: str | None, nonce: str, grader: bytes, n: int, limits: sb.SandboxLimits
) -> sb.TestsResult:
    """Verdicts from the grader's lines; the reason also from the candidate's launcher events."""
    lines, user = split_lines(raw, nonce)
    events: dict[str, str] = {}
    for head, rest in lines:
        events.setdefault(head, rest)
    verdicts: dict[int, tuple[bool, str]] = {}
    done = False
    for line in grader.decode("ascii", "replace").splitlines():
        head, _, rest = line.partition(" ")
        if head.isdigit() and int(head) < n:
            ok, _, error = rest.partition(" ")
            verdicts.setdefault(int(head), (ok == "ok", error))
        done = done or head == "done"
    passed = [verdicts.get(i, (False, ""))[0] for i in range(n)]
    stdout = user[: limits.output_bytes].decode("utf-8", "replace")
    failed = [f"test {i} failed: {e}" for i, (ok, e) in sorted(verdicts.items()) if not ok]
    ended = worker_ended(events, limits) if "done" not in events else None
    if why == "wall":
        reason: str | None = f"timed out after {limits.wall_seconds} s (wall)"
    elif why == "cpu":
        reason = f"killed: CPU time limit of the process tree ({limits.cpu_seconds} s)"
    elif why == "output" or len(user) > limits.output_bytes:
        reason = f"output limit exceeded (more than {limits.output_bytes} bytes)"
    elif "stop" in events:  # setup failure, program failure, sys.exit, no entry point
        reason = events["stop"]
    elif done and not failed:
        reason = None
    elif ended:
        reason = ended
    elif failed:
        reason = failed[0]
    else:
        reason = "the grader did not finish"
    return sb.TestsResult(passed=passed, reason=reason, stdout=stdout)
