"""The sandbox's protocol read back: its limits, its result, and the verdict from the lines the
launcher wrote (`<nonce> ...`) among the program's own output. Pure functions."""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run."""

    cpu_seconds: float = 5.0  # RLIMIT_CPU
    wall_seconds: float = 10.0  # the whole process group / PID namespace is killed after this
    memory_bytes: int = 512 * 2**20  # RLIMIT_AS
    file_bytes: int = 4 * 2**20  # RLIMIT_FSIZE
    workdir_bytes: int = 64 * 2**20  # the workdir's size (a tmpfs, in the namespace modes)
    workdir_files: int = 4096  # the workdir's inodes (files + directories), likewise
    processes: int = 16  # RLIMIT_NPROC, and the whole tree's task count where a cgroup is made
    tree_memory_bytes: int = 2**30  # the whole process tree's memory, where a cgroup is made
    output_bytes: int = 64 * 1024  # stdout+stderr kept; more than this -> killed


@dataclass(frozen=True)
class TestsResult:
    """Outcome of `run_tests`."""

    passed: list[bool]  # one per test, in order; tests never reached count as failed
    reason: str | None  # None when all ran and passed; else why it stopped, or the first failure
    stdout: str  # user output (stdout+stderr), truncated to output_bytes


def split_lines(raw: bytes, nonce: str) -> tuple[list[tuple[str, str]], bytes]:
    """The launcher's protocol lines (head, rest) and the user's output around them."""
    tag, pos, user, lines = f"\n{nonce} ".encode(), 0, bytearray(), []
    while (k := raw.find(tag, pos)) != -1:
        end = raw.find(b"\n", k + len(tag))
        end = len(raw) if end == -1 else end
        user += raw[pos:k]
        head, _, rest = raw[k + len(tag) : end].decode("ascii", "replace").partition(" ")
        lines.append((head, rest))
        pos = end + 1
    return lines, bytes(user + raw[pos:])


def ended(events: dict[str, str], limits: SandboxLimits) -> str | None:
    """Why the sandboxed worker died (CPU limit, a signal, an early exit), from its supervisor."""
    status, _, cpu = events.get("exit", "").rpartition(" ")
    if status == f"signal {signal.SIGXCPU}" or (
        status == f"signal {signal.SIGKILL}" and float(cpu or 0) >= limits.cpu_seconds
    ):
        return f"killed: CPU time limit ({limits.cpu_seconds} s)"
    if status.startswith("signal "):
        return f"killed by {signal.Signals(int(status.split()[1])).name}"
    return f"program exited ({status}) before the tests finished" if status else None


def verdict(
    raw: bytes, why: str | None, nonce: str, n: int, limits: SandboxLimits, returncode: int
) -> TestsResult:
    """Split protocol lines from user output and decide the verdicts and the reason."""
    verdicts: dict[int, tuple[bool, str]] = {}
    events: dict[str, str] = {}
    lines, user = split_lines(raw, nonce)
    for head, rest in lines:
        if head.isdigit() and int(head) < n:
            ok, _, error = rest.partition(" ")
            verdicts.setdefault(int(head), (ok == "ok", error))
        else:
            events.setdefault(head, rest)
    passed = [verdicts.get(i, (False, ""))[0] for i in range(n)]
    stdout = user[: limits.output_bytes].decode("utf-8", "replace")
    failed = [f"test {i} failed: {e}" for i, (ok, e) in sorted(verdicts.items()) if not ok]
    if why == "wall":
        reason = f"timed out after {limits.wall_seconds} s (wall)"
    elif why == "cpu":
        reason = f"killed: CPU time limit of the process tree ({limits.cpu_seconds} s)"
    elif why == "output" or len(user) > limits.output_bytes:
        reason = f"output limit exceeded (more than {limits.output_bytes} bytes)"
    elif "stop" in events:  # setup failure, program failure or sys.exit
        reason = events["stop"]
    elif "done" in events:
        reason = failed[0] if failed else None
    else:
        tail = " ".join(stdout.split()[-30:])
        reason = ended(events, limits) or f"sandbox failed (status {returncode}): {tail}"
    return TestsResult(passed=passed, reason=reason, stdout=stdout)
