"""The two programs of graded mode, as real code (metis_core/grading.py sends their source).

`serve` runs in the sandboxed candidate, appended to metis_core/sandbox_launcher.py (whose `os`,
`sys` and `json` it uses); `grader_main` is the trusted grader, run as `python -I -S -B -c`. Both
carry the value codec `enc`/`dec`. Like the launcher they import only the standard library and
no metis module: metis_core/grading.py cuts each function's source out of this file.
"""

# They run stripped down (no contextlib; the grader swaps its own stdout for /dev/null), hence:
# ruff: noqa: E701, E702, E731, UP031, SIM105, SIM115, PLW2901
import builtins
import json
import os
import sys


def enc(v, d=0):  # candidate side: a result as [tag, value], plain JSON
    if d > 100:
        raise ValueError("result nested too deeply")
    if v is None:
        return ["N"]
    if isinstance(v, bool):
        return ["b", v is True]
    if isinstance(v, int):
        return ["i", int.__format__(v, "x")]
    if isinstance(v, float):
        return ["f", float.__repr__(v)]
    if isinstance(v, complex):
        return ["c", complex.__repr__(v)]
    if isinstance(v, str):
        return ["s", str.__str__(v)]
    if isinstance(v, (bytes, bytearray)):
        return ["y", bytes(v).hex()]
    if isinstance(v, dict):
        return ["d", [[enc(k, d + 1), enc(x, d + 1)] for k, x in dict.items(v)]]
    for t, tag in ((list, "l"), (tuple, "t"), (set, "S"), (frozenset, "F")):
        if isinstance(v, t):
            return [tag, [enc(x, d + 1) for x in t.__iter__(v)]]
    raise TypeError("unsupported type %s" % type(v).__name__)


def dec(x, d=0):  # grader side (untrusted input): only builtin constructors on JSON values
    if d > 100 or type(x) is not list or not x or type(x[0]) is not str:
        raise ValueError("bad value")
    tag, arg = x[0], x[1] if len(x) > 1 else None
    if tag == "N":
        return None
    if tag == "b" and type(arg) is bool:
        return arg
    if type(arg) is str and len(arg) < 10**7:
        if tag == "s":
            return arg
        if tag == "i":
            return int(arg, 16)
        if tag == "f":
            return float(arg)
        if tag == "c":
            return complex(arg)
        if tag == "y":
            return bytes.fromhex(arg)
    if type(arg) is list:
        if tag == "d":
            return {
                dec(p[0], d + 1): dec(p[1], d + 1) for p in arg if type(p) is list and len(p) == 2
            }
        make = {"l": list, "t": tuple, "S": set, "F": frozenset}.get(tag)
        if make:
            return make([dec(e, d + 1) for e in arg])
    raise ValueError("bad value")


def serve(cfg, report):  # the sandboxed worker in graded mode: run the program, answer calls
    import builtins

    me, getpid, _exit, write, resp = os.getpid(), os.getpid, os._exit, os.write, cfg["resp"]
    ns = {"__builtins__": builtins, "__name__": "__sandbox__"}

    def flush():
        for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                s.flush()
            except BaseException:
                pass

    def text(e):
        try:
            return " ".join(str(e).split())[:300]
        except BaseException:
            return ""

    try:
        exec(compile(cfg["program"], "<program>", "exec", dont_inherit=True), ns)
    except BaseException as e:
        if getpid() != me:
            _exit(0)
        flush()
        name = type(e).__name__
        if isinstance(e, SystemExit):
            report("stop", "program called sys.exit(%r)" % (e.code,))
        elif isinstance(e, MemoryError):
            report("stop", "MemoryError: memory limit exceeded")
        else:
            report(
                "stop",
                ("" if isinstance(e, SyntaxError) else "program raised ")
                + (name + ": " + text(e)).rstrip(": "),
            )
        _exit(0)
    if getpid() != me:
        _exit(0)
    if cfg["entry"] and not callable(ns.get(cfg["entry"])):
        flush()
        report("stop", "the program defines no function %r" % cfg["entry"])
        _exit(0)
    for line in os.fdopen(cfg["req"], "rb"):
        try:
            call = json.loads(line)
            value = ns[call["f"]](*[dec(a) for a in call["a"]], **{k: dec(v) for k, v in call["k"]})
            try:
                out = {"v": enc(value)}
            except (TypeError, ValueError, RecursionError) as e:
                out = {"u": text(e)}
        except BaseException as e:
            if getpid() != me:
                _exit(0)
            out = {
                "e": type(e).__name__,
                "m": text(e) or "memory limit exceeded" * isinstance(e, MemoryError),
            }
        if getpid() != me:
            _exit(0)
        flush()
        data = (json.dumps(out) + "\n").encode()
        while data:
            data = data[write(resp, data) :]
    flush()
    report("done")
    _exit(0)


class CandidateError(Exception):
    pass


def grader_main():
    cfg = json.loads(sys.stdin.buffer.read())
    out, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    sys.stdout = open(os.devnull, "w")
    sys.stderr = sys.stdout
    req, resp, broken = os.fdopen(cfg["req"], "wb"), os.fdopen(cfg["resp"], "rb"), []

    def say(*words):
        os.write(out, (" ".join(map(str, words)) + "\n").encode("ascii", "backslashreplace"))

    def call(name, args, kwargs):
        if broken:
            raise CandidateError(broken[0])
        try:
            line = json.dumps(
                {
                    "f": name,
                    "a": [enc(a) for a in args],
                    "k": [[k, enc(v)] for k, v in kwargs.items()],
                }
            )
        except (TypeError, ValueError) as e:
            raise CandidateError("cannot send the arguments: %s" % e) from None
        try:
            req.write(line.encode() + b"\n")
            req.flush()
            data = resp.readline(cfg["reply_bytes"] + 1)
        except OSError:
            data = b""
        if not data.endswith(b"\n"):
            broken.append(
                "reply too large"
                if len(data) > cfg["reply_bytes"]
                else "the candidate process ended"
            )
            raise CandidateError(broken[0])
        try:
            msg = json.loads(data)
        except ValueError:
            msg = None
        if type(msg) is dict and "v" in msg:
            try:
                return dec(msg["v"])
            except (ValueError, TypeError, RecursionError, OverflowError):
                pass
        elif type(msg) is dict and "u" in msg:
            raise CandidateError("%s returned an unsupported value: %s" % (name, msg["u"]))
        elif type(msg) is dict and type(msg.get("e")) is str and type(msg.get("m")) is str:
            cls = getattr(builtins, msg["e"], None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    exc = cls(msg["m"])
                except Exception:
                    exc = CandidateError(msg["e"] + ": " + msg["m"])
            else:
                exc = CandidateError(msg["e"] + ": " + msg["m"])
            raise exc
        raise CandidateError("malformed reply from the candidate")

    class Proxy:
        def __init__(self, name):
            self.name = self.__name__ = self.__qualname__ = name

        def __call__(self, *args, **kwargs):
            return call(self.name, args, kwargs)

        def __repr__(self):
            return "<candidate function %s>" % self.name

    ns = {"__builtins__": builtins, "__name__": "__sandbox__"}
    import importlib

    for module, bind, attr, alias in cfg["imports"]:
        try:
            importlib.import_module(module)
            obj = sys.modules[bind]
            ns[alias] = getattr(obj, attr) if attr else obj
        except Exception:
            pass
    for name in cfg["names"]:
        ns[name] = Proxy(name)
    for i, test in enumerate(cfg["tests"]):
        try:
            exec(compile(test, "<test %d>" % i, "exec", dont_inherit=True), ns)
            say(i, "ok")
        except BaseException as e:
            try:
                text = type(e).__name__ + (": %s" % e if str(e) else "")
            except BaseException:
                text = type(e).__name__
            say(i, "fail", " ".join(text.split())[:300])
    say("done")
