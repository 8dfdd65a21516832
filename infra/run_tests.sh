#!/usr/bin/env bash
# The test suite: lint, unit tests, then integration tests with real vLLM/DeepSpeed/DuckDB/MLflow/
# Prefect on a tiny model. METIS_TEST_MARKERS selects tiers (default: everything not `slow`; set
# it to "" to run all). pytest's exit code 5 (nothing selected) is not a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${METIS_VENV:-.venv}
markers=${METIS_TEST_MARKERS-"not slow"}
"$VENV/bin/ruff" check . || exit 1
status=0
"$VENV/bin/python" -m pytest tests -m "$markers" "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "metis: no tests selected by -m '$markers'"
  status=0
fi
exit "$status"
