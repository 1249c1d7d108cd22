# The two commands the README promises. Both start from a clean clone.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: example test test-django6 test-redis test-pgbouncer test-lowest services bootstrap lint bench bench-env bench-smoke chaos chaos-smoke

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

## Every real-worker test again with Redis as the broker (docs/brokers.md).
REDIS_BROKER_URL ?= redis://127.0.0.1:6379/14
test-redis: services bootstrap
	HYGIENE_BROKER_URL=$(REDIS_BROKER_URL) $(PY) -m pytest -m worker $(PYTEST_ARGS)

## Every real-worker test again with the workers behind PgBouncer in transaction mode.
test-pgbouncer: services bootstrap
	bash scripts/pgbouncer.sh
	HYGIENE_WORKER_PGPORT=$${PGBOUNCER_PORT:-6440} $(PY) -m pytest -m worker $(PYTEST_ARGS)

## The same suite on Python 3.12 with Django 6.x (its own venv); needs a python3.12.
PY312 ?= $(shell for p in $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3 2>/dev/null) $$(command -v python3.12); do "$$p" -c "" 2>/dev/null && echo "$$p" && break; done)
test-django6: services
	@if [ -z "$(PY312)" ]; then echo "test-django6: no python3.12 on this machine; skipped"; exit 0; fi; \
	PYTHON=$(PY312) VENV=.venv-django6 DJANGO_SPEC="Django>=6.0,<6.2" bash scripts/bootstrap.sh && \
	.venv-django6/bin/python -c "import django, sys; print('test-django6: Django', django.get_version(), 'on Python', sys.version.split()[0])" && \
	.venv-django6/bin/python -m pytest $(PYTEST_ARGS)

## The suite against the LOWEST versions pyproject.toml declares (uv --resolution lowest-direct),
## in .venv-lowest: a floor this leg does not pass is a floor we do not support.
test-lowest: services
	bash scripts/lowest.sh
	.venv-lowest/bin/python -m pytest $(or $(PYTEST_ARGS),$(LOWEST_ARGS))

lint: bootstrap
	$(VENV)/bin/ruff check src tests example_worker benchmarks chaos
	$(VENV)/bin/mypy $(TYPECHECK_PATHS)
	$(VENV)/bin/lint-imports  # the layering of docs/architecture.md ([tool.importlinter])

## mypy (strict, django-stubs' plugin, celery-types) over the package and the typing test, whose
## `# type: ignore[code]` lines must fail with that code (docs/development.md).
TYPECHECK_PATHS := src tests/typecheck
.PHONY: typecheck
typecheck: bootstrap
	$(VENV)/bin/mypy $(TYPECHECK_PATHS)

## Benchmarks (docs/benchmarks.md), in their own venv with celery-once. Full run: ~30 min.
BENCH_VENV ?= .venv-bench
bench-env:
	BENCH_VENV=$(BENCH_VENV) bash benchmarks/bootstrap.sh

bench: services bench-env
	$(BENCH_VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)

## Tiny sizes (< 60 s); CI runs it after the tests so the benchmark cannot rot.
bench-smoke: services bench-env
	$(BENCH_VENV)/bin/python benchmarks/run.py --smoke $(BENCH_ARGS)

## Fault-injection suite (docs/development.md): SIGKILLs, a PostgreSQL restart, a broker cut.
## Not part of `make test`. CHAOS_ARGS="--broker redis --pgbouncer ..." (see chaos/run.py --help).
chaos: services bootstrap
	$(PY) chaos/run.py $(CHAOS_ARGS)

## The short version (~2 min): 200 keys, faults at 10 s and 20 s.
chaos-smoke: services bootstrap
	$(PY) chaos/run.py --smoke $(CHAOS_ARGS)
