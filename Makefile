# The README's commands. `make run` and `make test` set everything up from nothing first.
.PHONY: setup run test test-fast test-unit lint bench clean services-up services-down services-status

VENV ?= .venv
PY := $(VENV)/bin/python

setup:
	@infra/setup.sh

run: setup
	$(VENV)/bin/metis train --config configs/default.yaml

test: setup
	@bash infra/run_tests.sh

test-fast: setup
	@METIS_TEST_MARKERS="not slow" bash infra/run_tests.sh

test-unit: setup
	$(PY) -m pytest tests/unit -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

services-up: setup  # a Prefect and an MLflow server on 127.0.0.1 (docs/deployments.md)
	$(VENV)/bin/metis services up

services-down:
	$(VENV)/bin/metis services down

services-status:
	$(VENV)/bin/metis services status

bench: setup
	$(PY) bench/iteration_breakdown.py --config configs/default.yaml

clean:
	rm -rf runs .pytest_cache .ruff_cache
