"""Scoring in a child process with a time limit, so one completion cannot stall a run.

A completion like `\\boxed{9^{9^{9^{9}}}}` makes sympy (under math-verify, and under the
reasoning-gym scorers that parse answers) compute a power with hundreds of millions of digits:
the call never returns. math-verify's own time-outs use SIGALRM, which only works in the main
thread (Prefect runs tasks in worker threads) and cannot interrupt a long C call anyway. So the
math scorers run in a persistent child process: the parent waits at most `timeout_s` for each
answer and, past it, kills the child and starts a fresh one. This works from any thread.

Protocol: one JSON line per request on the child's stdin (`[target, args]`, target
`module:function`), one JSON line per answer on a private copy of its stdout (`["ok", value]` or
`["error", text]`); the child's own fd 1 goes to stderr, so a scorer's prints cannot corrupt it.
The child starts by importing `preload` (under `start_timeout_s`, not `timeout_s`), exits on EOF
(when the parent dies) and has its address space capped at `MEMORY_LIMIT_BYTES`.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_CHILD = "import sys; from metis_core.rewards.worker import serve; serve(sys.argv[1:])"
MEMORY_LIMIT_BYTES = 4 << 30
"""Address-space cap of the child: a blow-up ends in MemoryError (reward 0), not host swapping."""


class ScoringTimeout(Exception):
    """The child gave no answer in time; it was killed (the next call starts a fresh one)."""


class ScoringFailed(Exception):
    """The scorer raised in the child, or the child died; the message says which."""


class ScoringWorker:
    """One child process that calls `module:function` targets; thread-safe (calls take turns)."""

    def __init__(
        self, timeout_s: float, preload: tuple[str, ...] = (), start_timeout_s: float = 180.0
    ) -> None:
        self.timeout_s = timeout_s
        self.preload = preload
        self.start_timeout_s = start_timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._ready = False
        atexit.register(self.close)

    def call(self, target: str, *args: Any) -> Any:
        """`target(*args)` in the child (JSON-able arguments and result); raises ScoringTimeout
        past `timeout_s`, ScoringFailed when the scorer raises or the child dies."""
        request = json.dumps([target, list(args)]).encode() + b"\n"
        with self._lock:
            proc = self._started()
            try:
                assert proc.stdin is not None
                proc.stdin.write(request)
                proc.stdin.flush()
            except OSError as err:
                self._stop()
                raise ScoringFailed(f"the scoring process died ({err})") from err
            try:
                status, value = self._read_line(self.timeout_s)
            except TimeoutError:
                self._stop()
                self._start()  # the replacement imports while the caller goes on
                raise ScoringTimeout(f"timed out after {self.timeout_s:g} s") from None
        if status != "ok":
            raise ScoringFailed(str(value))
        return value

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            self._start()
        assert self._proc is not None
        if not self._ready:
            try:
                self._read_line(self.start_timeout_s)
            except TimeoutError:
                self._stop()
                raise ScoringFailed(
                    f"the scoring process did not start in {self.start_timeout_s:g} s"
                ) from None
            self._ready = True
        return self._proc

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        # one BLAS thread: per-thread buffers of many cores would not fit MEMORY_LIMIT_BYTES
        blas = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        env = {**os.environ, **blas, "PYTHONPATH": path}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *self.preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C of the run reaches the parent, which ends it
        )
        self._buffer, self._ready = b"", False

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def _read_line(self, timeout_s: float) -> list[Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        readable = select.poll()  # not select.select: a big process has fds past 1024
        readable.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not readable.poll(max(1, int(left * 1000))):
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                code = self._proc.wait()
                self._stop()
                raise ScoringFailed(f"the scoring process died (exit code {code})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


def serve(preload: list[str]) -> None:
    """The child: answer requests from stdin until EOF."""
    import resource

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    for name in preload:
        importlib.import_module(name)
    out.write(b'["ready", null]\n')
    out.flush()
    for line in sys.stdin.buffer:
        target, args = json.loads(line)
        try:
            module, name = target.split(":")
            answer = json.dumps(["ok", getattr(importlib.import_module(module), name)(*args)])
        except Exception as err:  # reported to the parent, which turns it into reward 0
            answer = json.dumps(["error", f"{type(err).__name__}: {err}"[:500]])
        out.write(answer.encode() + b"\n")
        out.flush()
