"""The suite's own rules (tests/conftest.py): tiers run cheapest first, under a spent time budget
the slow tests not yet started are skipped with a reason, never the others, and a test marked
serial refuses to run in a parallel worker."""

import os
import subprocess
import sys
import time

from tests.conftest import REPO


def pytest_run(
    *args: str, budget: str | None, started: float | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for name in ("METIS_TEST_BUDGET_MIN", "METIS_TEST_STARTED", "PYTEST_XDIST_WORKER"):
        env.pop(name, None)
    if budget is not None:
        env["METIS_TEST_BUDGET_MIN"] = budget
    if started is not None:
        env["METIS_TEST_STARTED"] = str(started)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_spent_budget_skips_slow_tests_and_says_why():
    done = pytest_run("-rs", "tests/integration/test_smollm2.py", budget="0")
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 skipped" in done.stdout
    assert "time budget is spent" in done.stdout and "METIS_TEST_MARKERS=slow" in done.stdout


def test_the_budget_counts_from_when_the_suite_started():
    """infra/run_tests.sh runs pytest twice (serial tests, then the rest in parallel): the budget
    counts from the first run's start, which it passes on, not from each run's own."""
    done = pytest_run("-rs", "tests/integration/test_smollm2.py", budget="1",
                      started=time.time() - 120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 skipped" in done.stdout and "(2 of METIS_TEST_BUDGET_MIN=1" in done.stdout


def test_a_serial_test_refuses_a_parallel_worker():
    """Tests that look at every process or the shared temp folder would see another worker's
    sandboxes; in a pytest-xdist worker they fail saying how to run them."""
    selected = (
        "tests/unit/test_sandbox.py",
        "-k",
        "test_correct_program_passes_all_tests and rlimits",
    )
    done = pytest_run("-n", "1", *selected, budget=None)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "cannot run beside other tests" in done.stdout and "serial" in done.stdout
    alone = pytest_run(*selected, budget=None)
    assert alone.returncode == 0 and " passed" in alone.stdout, alone.stdout[-2000:]


def test_the_budget_spares_tests_that_are_not_slow():
    done = pytest_run("-q", "tests/unit/test_hardware.py", budget="0")
    assert done.returncode == 0, done.stdout[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def test_unit_tests_are_collected_before_integration_and_slow_ones():
    done = pytest_run("--collect-only", "-q", "tests/integration", "tests/unit", budget=None)
    files = []
    for line in done.stdout.splitlines():
        name = line.split("::")[0]
        if "::" in line and (not files or files[-1] != name):
            files.append(name)
    assert len(files) == len(set(files)), "a module's tests were split"
    tiers = [
        0 if "/unit/" in f else 2 if "pytest.mark.slow" in (REPO / f).read_text() else 1
        for f in files
    ]
    assert 0 in tiers and 1 in tiers and 2 in tiers
    assert tiers == sorted(tiers), files
