# The two commands the README promises. Both start from a clean clone.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: example test services bootstrap lint bench bench-env bench-smoke

services:
	bash scripts/services.sh

bootstrap:
	bash scripts/bootstrap.sh

## Set everything up and run the example worker end to end.
example: services bootstrap
	bash example_worker/run_demo.sh

## Run the whole test suite against real PostgreSQL, RabbitMQ and Redis.
test: services bootstrap
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check src tests

## Benchmarks (docs/benchmarks.md), in their own venv with celery-once. Full run: ~30 min.
BENCH_VENV ?= .venv-bench
bench-env:
	BENCH_VENV=$(BENCH_VENV) bash benchmarks/bootstrap.sh

bench: services bench-env
	$(BENCH_VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)

## Tiny sizes (< 60 s); CI runs it after the tests so the benchmark cannot rot.
bench-smoke: services bench-env
	$(BENCH_VENV)/bin/python benchmarks/run.py --smoke $(BENCH_ARGS)
