"""Run model-written Python programs and their tests in a sandbox (stdlib only).

`run_tests(program, tests, entry_point=name)` (graded mode, what `code_tests` uses) runs the
program here and the tests in a trusted grader process that calls its functions across a pipe
(`metis_core.grading`); without `entry_point` (trusted programs only) program and tests share one
sandboxed namespace. `__name__ == "__sandbox__"`. `isolation()` names what this machine gives.
1. Always: a child process whose launcher (no `preexec_fn`: the host is multi-threaded) runs
   `python -s -S -B -P` with an environment built from scratch (HOME=TMPDIR=a fresh workdir,
   removed afterwards), sets RLIMIT_CPU, _AS, _FSIZE, _NPROC, _CORE=0, _NOFILE=64 and
   PR_SET_NO_NEW_PRIVS; as real root it clears the capability bounding set and switches to a
   random uid >= 1.5e9 (65534's system-wide RLIMIT_NPROC count would make concurrent sandboxes
   fail each other's forks). The parent enforces the wall clock and the output cap. Where a
   cgroup hierarchy is writable (`metis_core.sandbox_cgroup`) the whole tree also gets a cgroup:
   memory (`tree_memory_bytes`) and task count bounded together, CPU time summed over the tree
   (killed past cpu_seconds + 1), and a final kill that reaches setsid()ed processes.
2. Where `unshare` works (probed once): `unshare --net --mount --pid --ipc --uts --fork
   --kill-child --mount-proc` (+ `--user --map-root-user` when not root: "namespaces+userns").
   The launcher bind-mounts the workdir on itself (nosuid, nodev), remounts every other mount
   read-only (checked with statvfs) and drops privileges. No network, host processes invisible,
   the PID namespace dies with the sandbox.
Fallback "rlimits+audit-hook" (no working unshare; METIS_SANDBOX=rlimits or `mode=`): layer 1
plus a `sys.addaudithook` hook refusing sockets, process creation, `_posixsubprocess`/`ctypes`,
writes, deletes, renames, chmod and mkdir outside the workdir, links, other pids' /proc entries
and signals: Python-level, lexical path checks, much weaker than namespaces.

Protocol: the parent sends the launcher's config (program, a random nonce; tests or an entry
point) as JSON on stdin; `<nonce> ...` lines report the worker's exit and CPU time (and, without
an entry point, each test's verdict). Guaranteed in graded mode: the sandboxed process never
receives the tests or expected values and decides no verdict. Not guaranteed: it can read what
is readable in its mount namespace (the interpreter, the repository, read-only), and in the
rlimits fallback reach other processes as far as the audit hook and uid allow. Without a
writable cgroup, memory and task limits are per process. In shared-namespace mode the program
can forge verdicts.
"""

import contextlib
import functools
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import IO

from metis_core.sandbox_cgroup import TreeLimits
from metis_core.sandbox_verdict import SandboxLimits, TestsResult, verdict

__all__ = ["SandboxLimits", "TestsResult", "isolation", "run_tests"]

_NS, _USERNS, _FALLBACK = "namespaces", "namespaces+userns", "rlimits+audit-hook"
_UNSHARE = ("--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
_MODES = {_NS: _NS, "userns": _USERNS, _USERNS: _USERNS, "rlimits": _FALLBACK, _FALLBACK: _FALLBACK}


_LAUNCHER = r"""# metis-sandbox-launcher
import json, os, resource, sys
PRELOAD = ("math cmath re itertools functools collections collections.abc string heapq bisect typing json "
    "random statistics fractions decimal hashlib copy operator datetime time textwrap unicodedata array struct "
    "dataclasses enum abc io numbers contextlib traceback queue threading base64 binascii zlib pprint calendar "
    "secrets types warnings weakref ast inspect socket encodings.idna tempfile pathlib shutil glob fnmatch csv").split()
def main():
    cfg = json.loads(sys.stdin.buffer.read())
    for path in cfg.get("cgroups", ()): open(path, "w").write("0")  # join the tree's cgroup first
    fd = os.open("/dev/null", os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
    nonce, work, mode, uid, lim = cfg["nonce"], cfg["work"], cfg["mode"], cfg["uid"], cfg["limits"]
    out, write, ns = os.dup(1), os.write, mode != "rlimits+audit-hook"
    def report(*words):
        write(out, ("\n%s %s\n" % (nonce, " ".join(map(str, words)))).encode("ascii", "backslashreplace"))
    try:
        for name in PRELOAD if ns or uid is not None else (): __import__(name)
        import ctypes; libc = ctypes.CDLL(None, use_errno=True)
        def check(rc, what):
            if rc != 0: raise OSError(ctypes.get_errno(), "%s: %s" % (what, os.strerror(ctypes.get_errno())))
        if ns: confine(libc, check, work)
        os.chdir(work)
        if uid is not None or mode == "namespaces+userns":
            for cap in range(int(open("/proc/sys/kernel/cap_last_cap").read()) + 1):
                check(libc.prctl(24, ctypes.c_ulong(cap), 0, 0, 0), "PR_CAPBSET_DROP")
        for res, soft, hard in (("CPU", lim[0], lim[0] + 1), ("AS", lim[1], lim[1]), ("FSIZE", lim[2], lim[2]),
                ("NPROC", lim[3], lim[3]), ("CORE", 0, 0), ("NOFILE", 64, 64)):
            resource.setrlimit(getattr(resource, "RLIMIT_" + res), (soft, hard))
        if uid is not None: os.setgroups([]); os.setgid(uid); os.setuid(uid)
        elif mode == "namespaces+userns":
            libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL; then capset() to all-zero sets
            check(libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()), "capset")
        check(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        if [int(l.split()[1], 16) for l in open("/proc/self/status") if l.startswith("CapEff")] != [0]:
            raise OSError("capabilities still effective")
        del libc, check
        for name in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]: del sys.modules[name]
    except Exception as e:
        report("stop", "sandbox setup failed: %s: %s" % (type(e).__name__, e)); os._exit(70)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid:  # supervisor (PID 1 under namespaces): report how the worker ended
        _, status, ru = os.wait4(pid, 0)
        how = "signal %d" % os.WTERMSIG(status) if os.WIFSIGNALED(status) else "code %d" % os.WEXITSTATUS(status)
        report("exit", how, "%.3f" % (ru.ru_utime + ru.ru_stime)); os._exit(0)
    if not ns: sys.addaudithook(make_hook(work, os.getpid()))
    if "entry" in cfg: serve(cfg, report)  # defined by metis_core.grading's addition
    worker(cfg["program"], cfg["tests"], report)
def confine(libc, check, work):
    keep = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
    mount = lambda src, dst, flags: check(libc.mount(src, dst.encode(), None, flags, None), "mount " + dst)
    mount(None, "/", 16384 | 1 << 18)  # MS_REC | MS_PRIVATE
    mount(work.encode(), work, 4096)  # MS_BIND
    rows = [line.split() for line in open("/proc/self/mountinfo")]
    points = [row[4].encode().decode("unicode_escape") for row in rows]  # \040 -> " "
    for row, point in zip(rows, points):  # MS_REMOUNT | MS_BIND | (NOSUID | NODEV or RDONLY)
        flags = 32 | 4096 | (6 if point == work else 1)
        try: mount(None, point, flags | sum(keep.get(opt, 0) for opt in row[5].split(",")))
        except OSError: pass  # e.g. a shadowed mount point: the statvfs check below decides
    for point in points:
        try: ok = point == work or os.statvfs(point).f_flag & os.ST_RDONLY
        except OSError: ok = True  # not reachable
        if not ok: raise RuntimeError("could not make %s read-only" % point)
def make_hook(work, me):
    getcwd, readlink, isdir, fsdecode, str_, bytes_, int_ = os.getcwd, os.readlink, os.path.isdir, os.fsdecode, str, bytes, int
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny = frozenset(("socket.connect socket.bind socket.getaddrinfo socket.gethostbyname "
        "socket.gethostbyaddr socket.sendto socket.sendmsg subprocess.Popen os.system os.exec "
        "os.fork os.forkpty os.posix_spawn os.spawn ctypes.dlopen ctypes.dlsym os.symlink os.link "
        "os.killpg sys.settrace sys.setprofile").split())
    paths = "os.remove os.rmdir os.rename shutil.rmtree os.chmod os.chown os.mkdir os.truncate os.utime os.chflags".split()
    def norm(p):  # lexical, and only with captured functions: monkeypatching os cannot fool it
        parts = []
        p = fsdecode(p) if isinstance(p, bytes_) else p
        for s in (p if p.startswith("/") else getcwd() + "/" + p).split("/"):
            if s == "..": parts = parts[:-1]
            elif s not in ("", "."): parts.append(s)
        return "/" + "/".join(parts)
    inside = lambda p: not isinstance(p, int_) and ((q := norm(p)) == work or q.startswith(work + "/"))
    def at(p, fd):  # the path a dir_fd-relative call really acts on
        if fd in (None, -1) or isinstance(p, int_) or (p := fsdecode(p)).startswith("/"): return p
        return readlink("/proc/self/fd/%d" % fd) + "/" + p
    def hook(event, args):
        bad = event in deny
        if event == "import":
            bad = args[0] in ("_posixsubprocess", "_ctypes", "ctypes")
        elif event == "open" and isinstance(args[0], (str_, bytes_)):
            p, mode, flags = norm(args[0]), args[1] or "", args[2] or 0
            q = p.split("/") + [""]
            if q[1] == "proc" and (q[2].isdigit() and q[2] != str_(me) or q[2] in ("self", "thread-self")
                    and q[3] in ("root", "cwd", "fd", "task", "map_files", "exe")):
                bad = True
            elif not inside(p):
                bad = flags & W or any(c in mode for c in "wax+") or isdir(p)
        elif event in paths:
            fds = args[2:4] if event == "os.rename" else (None,) if event in ("os.truncate", "os.chflags") else args[-1:]
            bad = not all(inside(at(p, fd)) for p, fd in zip(args, fds))
        elif event == "os.kill": bad = args[0] != me
        elif event == "object.__setattr__":  # e.g. replacing this hook's __code__
            bad = args[1] in ("__code__", "__defaults__", "__kwdefaults__")
        if bad: raise PermissionError("sandbox: %s refused" % event)
    return hook
def worker(program, tests, report):
    import builtins
    me, getpid, _exit = os.getpid(), os.getpid, os._exit
    ns = {"__builtins__": builtins, "__name__": "__sandbox__"}
    def flush():
        for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try: s.flush()
            except BaseException: pass
    def err(e):
        if isinstance(e, MemoryError): return "MemoryError: memory limit exceeded"
        try: text = type(e).__name__ + (": %s" % e if str(e) else "")
        except BaseException: text = type(e).__name__
        return " ".join(text.split())[:300]
    def run(src, name):
        try: exec(compile(src, name, "exec", dont_inherit=True), ns)
        except BaseException as e: return e
        finally:
            if getpid() != me: _exit(0)  # a fork made by the user code: never report
    e = run(program, "<program>"); flush()
    if e is not None:  # the tests need the program: stop here
        why = err(e) if isinstance(e, SyntaxError) else "program raised " + err(e)
        report("stop", "program called sys.exit(%r)" % (e.code,) if isinstance(e, SystemExit) else why); _exit(0)
    for i, test in enumerate(tests):
        e = run(test, "<test %d>" % i)
        flush(); report(i, "ok" if e is None else "fail " + err(e))
        if isinstance(e, SystemExit):
            report("stop", "test %d called sys.exit(%r)" % (i, e.code)); _exit(0)
    flush(); report("done"); _exit(0)
"""


@functools.cache
def _probe() -> str:
    """The strongest mode that works here (tried once per process)."""
    candidates = (_NS, _USERNS) if os.geteuid() == 0 else (_USERNS,)
    for mode in candidates if shutil.which("unshare") else ():
        if run_tests("x = 1", ["assert x"], mode=mode).reason is None:
            return mode
    return _FALLBACK


def _resolve(mode: str | None) -> str:
    if (mode := mode or os.environ.get("METIS_SANDBOX") or "auto") not in (*_MODES, "auto"):
        raise ValueError(f"unknown sandbox mode {mode!r}; use auto or one of {sorted(_MODES)}")
    return _probe() if mode == "auto" else _MODES[mode]


def isolation() -> str:
    """The isolation used here: "namespaces", "namespaces+userns" or "rlimits+audit-hook"."""
    return _resolve(None)


def _cleanup(path: str, tree: TreeLimits | None = None) -> None:
    """Kill whatever is left in the tree's cgroup, then remove the workdir whatever is in it
    (`chmod 000`, trees too deep for the recursive rmtree)."""
    if tree is not None:
        tree.close()
    if os.geteuid() != 0:  # undo any `chmod 000` left by the program (root ignores modes)
        subprocess.run(["chmod", "-R", "u+rwX", path], capture_output=True)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["rm", "-rf", "--", path], capture_output=True, timeout=120)
    if os.path.lexists(path):
        with contextlib.suppress(RecursionError):
            shutil.rmtree(path, ignore_errors=True)


def _feed(stdin: IO[bytes], payload: bytes) -> None:
    with contextlib.suppress(OSError), stdin:  # a child dead before reading is reported later
        stdin.write(payload)


def _collect(
    proc: subprocess.Popen[bytes], deadline: float, cap: int, tree: TreeLimits | None, cpu: float
) -> tuple[bytes, str | None]:
    """Read the child's output until EOF, the deadline, `cap` bytes or `cpu` seconds used by the
    whole tree (where it has a cgroup); always kills the group."""
    assert proc.stdout is not None
    fd, buf, why = proc.stdout.fileno(), bytearray(), None
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if tree is not None and tree.cpu_seconds() > cpu:
                why = "cpu"
                break
            if not sel.select(min(left, 0.2)):
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    break  # quiet pipe and the leader has exited: stragglers are killed below
                continue
            if not (data := os.read(fd, 1 << 16)):
                break
            buf += data
            if len(buf) > cap:
                why = "output"
                break
        else:
            why = "wall"
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet, so no pid reuse
    proc.wait()
    return bytes(buf), why


def _start(
    mode: str,
    limits: SandboxLimits,
    extra: dict[str, object],
    pass_fds: tuple[int, ...] = (),
    script: str = "",
) -> tuple[subprocess.Popen[bytes], str, dict[str, object], TreeLimits | None]:
    """Start the sandboxed launcher (+ `script`, defining more of its functions) in a fresh workdir.

    Returns the process, the workdir, the launcher's config (the caller sends it as JSON on the
    child's stdin, `_feed`; the launcher joins the tree's cgroup before anything else) and the
    tree's cgroup where this machine gives one (the caller passes both to `_cleanup`)."""
    nonce, uid = secrets.token_hex(16), None
    work = os.path.realpath(tempfile.mkdtemp(prefix="metis-sandbox-"))
    if os.geteuid() == 0 and mode != _USERNS:
        uid = 1_500_000_000 + secrets.randbelow(1 << 24)
        os.chown(work, uid, uid)
    cmd = [sys.executable, "-s", "-S", "-B", "-P", "-c", _LAUNCHER + script + "main()\n"]
    if mode != _FALLBACK:
        user = ["--user", "--map-root-user"] if mode == _USERNS else []
        cmd = ["unshare", *user, *_UNSHARE, "--", *cmd]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "TMPDIR": work,
           "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}  # fmt: skip
    lim = [math.ceil(limits.cpu_seconds), limits.memory_bytes, limits.file_bytes, limits.processes]
    cfg = {"nonce": nonce, "work": work, "mode": mode, "uid": uid, "limits": lim, **extra}
    tree = TreeLimits.open(limits.tree_memory_bytes, limits.processes)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=work, env=env, start_new_session=True, pass_fds=pass_fds)  # fmt: skip
        if tree is not None:
            tree.add(proc.pid)
            cfg["cgroups"] = tree.procs_files()
    except BaseException:
        _cleanup(work, tree)
        raise
    return proc, work, cfg, tree


def run_tests(
    program: str,
    tests: Sequence[str],
    limits: SandboxLimits = SandboxLimits(),  # noqa: B008 (frozen, immutable)
    *,
    mode: str | None = None,
    entry_point: str | None = None,
) -> TestsResult:
    """Run each test (a snippet such as "assert f(2) == 4") against `program`, each in its own
    try/except. With `entry_point` the tests run in a trusted grader process and call the
    program's functions across a pipe (`metis_core.grading`); without it (trusted snippets only)
    program and tests share one sandboxed namespace. `mode` (else env METIS_SANDBOX) forces
    "namespaces", "userns" or "rlimits"; the default "auto" takes the strongest that works here
    (see the module docstring).
    """
    mode, tests = _resolve(mode), list(tests)
    if entry_point is not None:
        from metis_core.grading import run_graded

        return run_graded(program, tests, entry_point, limits, mode)
    start = time.monotonic()
    proc, work, cfg, tree = _start(mode, limits, {"program": program, "tests": tests})
    try:
        data = json.dumps(cfg).encode()
        threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True).start()
        cap = limits.output_bytes + 512 * (len(tests) + 8)  # room for the protocol lines
        raw, why = _collect(proc, start + limits.wall_seconds, cap, tree, limits.cpu_seconds + 1)
    finally:
        _cleanup(work, tree)
    return verdict(raw, why, str(cfg["nonce"]), len(tests), limits, proc.returncode)
