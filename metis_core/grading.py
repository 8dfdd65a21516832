"""Grade a candidate program where it cannot reach the verdict (`run_tests(..., entry_point=)`).

Three processes: the host (`run_graded`), the sandboxed candidate (`metis_core.sandbox`'s launcher
plus `_SERVE`) and a trusted grader (`_GRADER`: a plain `python -I -S` child, not sandboxed, killed
at the wall-clock deadline). The candidate receives only its program, then one call request per
line on a request pipe: a function name and arguments. It calls the function and writes the result
to a reply pipe, encoded as plain values with their types (`_CODEC`). The grader holds the tests:
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
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

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

_CODEC = r"""
def enc(v, d=0):  # candidate side: a result as [tag, value], plain JSON
    if d > 100: raise ValueError("result nested too deeply")
    if v is None: return ["N"]
    if isinstance(v, bool): return ["b", v is True]
    if isinstance(v, int): return ["i", int.__format__(v, "x")]
    if isinstance(v, float): return ["f", float.__repr__(v)]
    if isinstance(v, complex): return ["c", complex.__repr__(v)]
    if isinstance(v, str): return ["s", str.__str__(v)]
    if isinstance(v, (bytes, bytearray)): return ["y", bytes(v).hex()]
    if isinstance(v, dict): return ["d", [[enc(k, d + 1), enc(x, d + 1)] for k, x in dict.items(v)]]
    for t, tag in ((list, "l"), (tuple, "t"), (set, "S"), (frozenset, "F")):
        if isinstance(v, t): return [tag, [enc(x, d + 1) for x in t.__iter__(v)]]
    raise TypeError("unsupported type %s" % type(v).__name__)
def dec(x, d=0):  # grader side (untrusted input): only builtin constructors on JSON values
    if d > 100 or type(x) is not list or not x or type(x[0]) is not str: raise ValueError("bad value")
    tag, arg = x[0], x[1] if len(x) > 1 else None
    if tag == "N": return None
    if tag == "b" and type(arg) is bool: return arg
    if type(arg) is str and len(arg) < 10**7:
        if tag == "s": return arg
        if tag == "i": return int(arg, 16)
        if tag == "f": return float(arg)
        if tag == "c": return complex(arg)
        if tag == "y": return bytes.fromhex(arg)
    if type(arg) is list:
        if tag == "d": return {dec(p[0], d + 1): dec(p[1], d + 1) for p in arg if type(p) is list and len(p) == 2}
        make = {"l": list, "t": tuple, "S": set, "F": frozenset}.get(tag)
        if make: return make([dec(e, d + 1) for e in arg])
    raise ValueError("bad value")
"""

_SERVE = (
    _CODEC
    + r"""
def serve(cfg, report):  # the sandboxed worker in graded mode: run the program, answer calls
    import builtins
    me, getpid, _exit, write, resp = os.getpid(), os.getpid, os._exit, os.write, cfg["resp"]
    ns = {"__builtins__": builtins, "__name__": "__sandbox__"}
    def flush():
        for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try: s.flush()
            except BaseException: pass
    def text(e):
        try: return " ".join(str(e).split())[:300]
        except BaseException: return ""
    try: exec(compile(cfg["program"], "<program>", "exec", dont_inherit=True), ns)
    except BaseException as e:
        if getpid() != me: _exit(0)
        flush(); name = type(e).__name__
        if isinstance(e, SystemExit): report("stop", "program called sys.exit(%r)" % (e.code,))
        elif isinstance(e, MemoryError): report("stop", "MemoryError: memory limit exceeded")
        else: report("stop", ("" if isinstance(e, SyntaxError) else "program raised ") + (name + ": " + text(e)).rstrip(": "))
        _exit(0)
    if getpid() != me: _exit(0)
    if cfg["entry"] and not callable(ns.get(cfg["entry"])):
        flush(); report("stop", "the program defines no function %r" % cfg["entry"]); _exit(0)
    for line in os.fdopen(cfg["req"], "rb"):
        try:
            call = json.loads(line)
            value = ns[call["f"]](*[dec(a) for a in call["a"]], **{k: dec(v) for k, v in call["k"]})
            try: out = {"v": enc(value)}
            except (TypeError, ValueError, RecursionError) as e: out = {"u": text(e)}
        except BaseException as e:
            if getpid() != me: _exit(0)
            out = {"e": type(e).__name__, "m": text(e) or "memory limit exceeded" * isinstance(e, MemoryError)}
        if getpid() != me: _exit(0)
        flush(); data = (json.dumps(out) + "\n").encode()
        while data: data = data[write(resp, data):]
    flush(); report("done"); _exit(0)
"""
)

_GRADER = (
    "# metis-grader\nimport builtins, json, os, sys\n"
    + _CODEC
    + r"""
class CandidateError(Exception):
    pass
def main():
    cfg = json.loads(sys.stdin.buffer.read())
    out, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1); sys.stdout = open(os.devnull, "w"); sys.stderr = sys.stdout
    req, resp, broken = os.fdopen(cfg["req"], "wb"), os.fdopen(cfg["resp"], "rb"), []
    def say(*words): os.write(out, (" ".join(map(str, words)) + "\n").encode("ascii", "backslashreplace"))
    def call(name, args, kwargs):
        if broken: raise CandidateError(broken[0])
        try: line = json.dumps({"f": name, "a": [enc(a) for a in args], "k": [[k, enc(v)] for k, v in kwargs.items()]})
        except (TypeError, ValueError) as e: raise CandidateError("cannot send the arguments: %s" % e) from None
        try: req.write(line.encode() + b"\n"); req.flush(); data = resp.readline(cfg["reply_bytes"] + 1)
        except OSError: data = b""
        if not data.endswith(b"\n"):
            broken.append("reply too large" if len(data) > cfg["reply_bytes"] else "the candidate process ended")
            raise CandidateError(broken[0])
        try: msg = json.loads(data)
        except ValueError: msg = None
        if type(msg) is dict and "v" in msg:
            try: return dec(msg["v"])
            except (ValueError, TypeError, RecursionError, OverflowError): pass
        elif type(msg) is dict and "u" in msg: raise CandidateError("%s returned an unsupported value: %s" % (name, msg["u"]))
        elif type(msg) is dict and type(msg.get("e")) is str and type(msg.get("m")) is str:
            cls = getattr(builtins, msg["e"], None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                try: exc = cls(msg["m"])
                except Exception: exc = CandidateError(msg["e"] + ": " + msg["m"])
            else: exc = CandidateError(msg["e"] + ": " + msg["m"])
            raise exc
        raise CandidateError("malformed reply from the candidate")
    class Proxy:
        def __init__(self, name): self.name = self.__name__ = self.__qualname__ = name
        def __call__(self, *args, **kwargs): return call(self.name, args, kwargs)
        def __repr__(self): return "<candidate function %s>" % self.name
    ns = {"__builtins__": builtins, "__name__": "__sandbox__"}
    import importlib
    for module, bind, attr, alias in cfg["imports"]:
        try:
            importlib.import_module(module); obj = sys.modules[bind]
            ns[alias] = getattr(obj, attr) if attr else obj
        except Exception: pass
    for name in cfg["names"]: ns[name] = Proxy(name)
    for i, test in enumerate(cfg["tests"]):
        try: exec(compile(test, "<test %d>" % i, "exec", dont_inherit=True), ns); say(i, "ok")
        except BaseException as e:
            try: text = type(e).__name__ + (": %s" % e if str(e) else "")
            except BaseException: text = type(e).__name__
            say(i, "fail", " ".join(text.split())[:300])
    say("done")
main()
"""
)


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
