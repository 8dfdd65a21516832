"""What the sandbox tests share: the isolation modes this machine supports, a checked run, and a
check that nothing was left behind."""

import functools
import time
from pathlib import Path

import pytest

from metis_core.sandbox import SandboxLimits, run_tests
from metis_core.sandbox import TestsResult as Result  # not "Test*": pytest would collect it
from tests.conftest import require_alone

FAST = SandboxLimits(cpu_seconds=2, wall_seconds=3, memory_bytes=256 * 2**20, processes=8)


@functools.cache
def _works(mode: str) -> bool:
    return run_tests("x = 1", ["assert x == 1"], mode=mode).reason is None


@pytest.fixture(params=["namespaces", "userns", "rlimits"])
def mode(request: pytest.FixtureRequest) -> str:
    if not _works(request.param):
        pytest.skip(f"sandbox mode {request.param} does not work on this machine")
    return request.param


def _strays() -> list[int]:
    """Pids of live processes still running the sandbox launcher or the grader, whoever started
    them: a test that looks must run alone (marked `serial`)."""
    require_alone("looks for sandbox processes among every process on the machine")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if b"metis-sandbox-launcher" in cmdline or b"metis-grader" in cmdline:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def assert_no_strays(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := _strays()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"sandbox processes left behind: {left}"


def run_checked(
    program: str,
    tests: list[str],
    mode: str,
    limits: SandboxLimits = FAST,
    entry_point: str | None = None,
) -> Result:
    """run_tests, checked to end within its wall clock (+3 s) with one verdict per test."""
    start = time.monotonic()
    result = run_tests(program, tests, limits, mode=mode, entry_point=entry_point)
    assert time.monotonic() - start < limits.wall_seconds + 3
    assert len(result.passed) == len(tests)
    return result
