#!/usr/bin/env bash
# The test suite: lint, then pytest twice. First the tests marked serial (the sandbox's, which look
# at every process and the shared temp folder) alone, about a minute; then everything else in
# METIS_TEST_WORKERS pytest-xdist workers (default 2, a test file to a worker): unit tests,
# integration tests with real vLLM/DeepSpeed/DuckDB/MLflow/Prefect on a tiny model, and the slow
# tier (the real SmolLM2, resume after a kill, the services walkthrough). xdist hands out the files
# with the most tests first, in tier order among equals (tests/conftest.py), so the slow tier's
# one-test files come last. Both runs together took 24-28 minutes on 2 AVX-512 cores (2026-12-04;
# in one process 28-36 minutes on fresh clones the day before). METIS_TEST_MARKERS selects tiers, e.g.
# "not slow"; pytest's exit code 5 (nothing selected) is not a failure. Under CI (CI=true) slow
# tests not started within METIS_TEST_BUDGET_MIN minutes (default 65, counted from the first
# pytest's start) are skipped, each saying so, so that a slow machine still finishes within CI's
# 90 minutes; unset or empty, no budget.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${METIS_VENV:-.venv}
markers=${METIS_TEST_MARKERS-}
if [ "${CI:-}" = true ]; then
  export METIS_TEST_BUDGET_MIN=${METIS_TEST_BUDGET_MIN-65}
fi
"$VENV/bin/ruff" check . || exit 1
# The walkthrough test takes screenshots with Debian's Chromium (infra/screenshots.py).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ||
    echo "metis: could not install chromium; the walkthrough test will skip its screenshots"
fi
# METIS_TEST_WORKERS=0 runs the parallel part in this one process.
workers=${METIS_TEST_WORKERS:-2}
export METIS_TEST_STARTED=${METIS_TEST_STARTED:-$(date +%s)}  # the budget counts from here
status=0
selected=0
run_pytest() {  # <marker expression> [pytest arguments]
  local expr=$1 rc=0
  shift
  "$VENV/bin/python" -m pytest tests -m "$expr" "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    return  # nothing selected: not a failure
  fi
  selected=1
  if [ "$rc" -ne 0 ]; then
    status=$rc
  fi
}
only=${markers:+ and ($markers)}
run_pytest "serial$only" "$@"
run_pytest "not serial$only" -n "$workers" --dist loadfile "$@"
if [ "$selected" -eq 0 ]; then
  echo "metis: no tests selected by -m '$markers'"
fi
exit "$status"
