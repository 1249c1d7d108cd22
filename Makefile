# The two commands the README promises. Both start from a clean clone.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: example test services bootstrap lint

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
