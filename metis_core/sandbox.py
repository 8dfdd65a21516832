"""Run model-written Python programs and their tests in a sandbox (stdlib only).

`run_tests(program, tests, entry_point=name)` (graded mode, what `code_tests` uses) runs the
program here and the tests in a trusted grader process that calls its functions across a pipe
(`metis_core.grading`); without `entry_point` (trusted programs only) program and tests share one
sandboxed namespace. `__name__ == "__sandbox__"`. `isolation()` names what this machine gives.
The launcher, the program started in the sandbox, is `metis_core/sandbox_launcher.py`.
1. Always: a child process whose launcher (no `preexec_fn`: the host is multi-threaded) runs
   `python -s -S -B -P` with an environment built from scratch (HOME=TMPDIR=its workdir), sets
   RLIMIT_CPU, _AS, _FSIZE, _NPROC, _CORE=0, _NOFILE=64 and PR_SET_NO_NEW_PRIVS; as real root it
   clears the capability bounding set and switches to a random uid >= 1.5e9 (65534's system-wide
   RLIMIT_NPROC count would make concurrent sandboxes fail each other's forks). The parent
   enforces the wall clock and the output cap. Where a cgroup hierarchy is writable
   (`metis_core.sandbox_cgroup`) the whole tree also gets a cgroup: memory (`tree_memory_bytes`)
   and task count bounded together, CPU time summed over the tree (killed past cpu_seconds + 1),
   and a final kill that reaches setsid()ed processes; where none is, a warning says so once.
2. Namespaces (the only modes `auto` picks; probed once): `unshare --net --mount --pid --ipc
   --uts --fork --kill-child --mount-proc` (+ `--user --map-root-user` when not root:
   "namespaces+userns"). The launcher builds a fresh root on a tmpfs (`_root_plan`): /usr, /etc
   and the interpreter's stdlib bound read-only, every other import path (site-packages,
   dist-packages, the repository) hidden under an empty mount, /dev/{null,zero,random,urandom},
   the sandbox's own /proc, and the workdir a tmpfs of `workdir_bytes` and `workdir_files`;
   then pivot_root, every mount but the workdir read-only (checked with statvfs), privileges
   dropped. No network, no host files but the system's and the stdlib's (no answer files, no run
   folders, no host /tmp, no host unix sockets), host processes invisible; everything dies, and
   every file vanishes, with the namespace.
Without a working namespace mode `auto` raises SandboxUnavailable with what to do. The fallback
"rlimits+audit-hook" runs only when asked for (METIS_SANDBOX=rlimits or `mode=`): layer 1 plus a
`sys.addaudithook` hook refusing sockets, process creation, `_posixsubprocess`/`ctypes`, writes,
deletes, renames, chmod and mkdir outside the workdir, reads outside what the namespace root
would show, links, other pids' /proc entries and signals: Python-level and lexical, much weaker.

Protocol: the parent sends the launcher's config (program, a random nonce; tests or an entry
point) as JSON on stdin; `<nonce> ...` lines report the worker's exit and CPU time (and, without
an entry point, each test's verdict). Guaranteed in graded mode: the sandboxed process never
receives the tests or expected values and decides no verdict. In shared-namespace mode the
program can forge verdicts.
"""

import contextlib
import functools
import glob
import json
import logging
import math
import os
import platform
import secrets
import selectors
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from metis_core.sandbox_cgroup import TreeLimits
from metis_core.sandbox_cgroup import available as tree_cgroups
from metis_core.sandbox_verdict import SandboxLimits, TestsResult, verdict

__all__ = ["SandboxLimits", "SandboxUnavailable", "TestsResult", "isolation", "run_tests"]

log = logging.getLogger(__name__)

_NS, _USERNS, _FALLBACK = "namespaces", "namespaces+userns", "rlimits+audit-hook"
_UNSHARE = ("--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
_MODES = {_NS: _NS, "userns": _USERNS, _USERNS: _USERNS, "rlimits": _FALLBACK, _FALLBACK: _FALLBACK}


_LAUNCHER = (Path(__file__).parent / "sandbox_launcher.py").read_text()


@functools.cache
def _root_plan() -> dict[str, object]:
    """What the sandbox's fresh root holds (namespace modes): the system directories and this
    interpreter's stdlib, read-only; hidden under empty mounts: every import path that is not the
    stdlib (site-packages, dist-packages, the repository, editable installs), where a bound
    directory holds it. Candidates import the standard library only; the tests' data, the
    repository and the run's files are not in their mount namespace."""
    binds, links = [], []  # binds: (source on the host, where the sandbox sees it)
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc"):
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            binds.append((top, top))
    under = lambda p, roots: any(p == r or p.startswith(r + "/") for r in roots)  # noqa: E731
    # the stdlib where the interpreter looks for it (its prefix may run through symlinks)
    seen = os.path.abspath(sysconfig.get_paths()["stdlib"])
    stdlib = os.path.realpath(seen)
    for path in dict.fromkeys((seen, stdlib)):
        if not under(path, [dst for _, dst in binds]):
            binds.append((stdlib, path))
    dynload = os.path.join(stdlib, "lib-dynload")
    paths = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    paths |= {os.path.realpath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    paths |= {os.path.realpath(p) for pat in ("site-packages", "dist-packages")
              for p in glob.glob(f"/usr/lib/python3*/{pat}") + glob.glob(f"/usr/local/lib/python3*/{pat}")}  # fmt: skip
    paths |= {os.path.join(stdlib, "site-packages"), os.path.join(seen, "site-packages")}
    paths.add(str(Path(__file__).resolve().parents[1]))
    shown = [dst for _, dst in binds]
    keep = (stdlib, seen, dynload, os.path.join(seen, "lib-dynload"))
    hide = sorted(p for p in paths if p not in keep and under(p, shown))
    syscalls = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
    return {
        "binds": binds,
        "links": links,
        "hide": hide,
        "pivot_root": syscalls.get(platform.machine()),
    }


class SandboxUnavailable(RuntimeError):
    """No namespace isolation on this machine, and the weaker fallback was not asked for."""


@functools.cache
def _probe() -> tuple[str | None, str]:
    """The strongest namespace mode that works here (tried once per process), or None and why."""
    if not shutil.which("unshare"):
        return None, "`unshare` (util-linux) is not installed"
    why = ""
    for mode in (_NS, _USERNS) if os.geteuid() == 0 else (_USERNS,):
        if (reason := run_tests("x = 1", ["assert x"], mode=mode).reason) is None:
            if tree_cgroups() is None:
                log.warning(
                    "sandbox: no writable cgroup here, so memory and process limits hold per "
                    "process, not for a program's whole process tree (docs/domains.md)"
                )
            return mode, ""
        why += f"{mode}: {reason}; "
    return None, why.rstrip("; ")


def _resolve(mode: str | None) -> str:
    if (mode := mode or os.environ.get("METIS_SANDBOX") or "auto") not in (*_MODES, "auto"):
        raise ValueError(f"unknown sandbox mode {mode!r}; use auto or one of {sorted(_MODES)}")
    if mode != "auto":
        if _MODES[mode] == _FALLBACK:
            _warn_fallback()
        return _MODES[mode]
    found, why = _probe()
    if found is None:
        raise SandboxUnavailable(
            f"model-written code is only run inside Linux namespaces, and they do not work here "
            f"({why}). Run as root, or allow unprivileged user namespaces (sysctl "
            f"kernel.unprivileged_userns_clone=1, or kernel.apparmor_restrict_unprivileged_userns=0"
            f" on Ubuntu); or set METIS_SANDBOX=rlimits to accept the much weaker "
            f"rlimits+audit-hook fallback, which does not stop hostile programs (docs/domains.md)"
        )
    return found


@functools.cache
def _warn_fallback() -> None:
    log.warning("sandbox: METIS_SANDBOX=rlimits asks for the rlimits+audit-hook fallback; it does "
                "not stop a hostile program from forging its reward or reaching the host")  # fmt: skip


def isolation() -> str:
    """The isolation used here: "namespaces", "namespaces+userns" or, only when METIS_SANDBOX
    asks for it, "rlimits+audit-hook". Raises SandboxUnavailable where no namespace mode works."""
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
    cfg["root"] = {**_root_plan(), "bytes": limits.workdir_bytes, "inodes": limits.workdir_files}
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
    program's functions across a pipe (`metis_core.grading`); "" grades the same way without
    requiring a particular function. Without it (trusted snippets only) program and tests share
    one sandboxed namespace. `mode` (else env METIS_SANDBOX) forces
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
