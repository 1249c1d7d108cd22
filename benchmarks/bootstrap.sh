#!/usr/bin/env bash
# Create the benchmark's own environment (.venv-bench): the library plus celery-once, its
# Redis-lock peer, which must never leak into the library's dependencies or the test venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${BENCH_VENV:-.venv-bench}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
quiet() { "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
quiet "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
quiet "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r benchmarks/requirements.txt -e .
"$VENV/bin/python" -c "import celery_hygiene, celery_once, psycopg, redis"
