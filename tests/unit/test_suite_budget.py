"""The suite's own rules (tests/conftest.py): tiers run cheapest first, and under a spent time
budget the slow tests not yet started are skipped with a reason, never the others."""

import os
import subprocess
import sys

from tests.conftest import REPO


def pytest_run(*args: str, budget: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("METIS_TEST_BUDGET_MIN", None)
    if budget is not None:
        env["METIS_TEST_BUDGET_MIN"] = budget
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
