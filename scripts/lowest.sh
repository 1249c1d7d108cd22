#!/usr/bin/env bash
# Build .venv-lowest: the package with the LOWEST versions its pyproject declares for its direct
# dependencies (and its [test] extra), resolved by uv's `--resolution lowest-direct`. A floor that
# this leg does not pass is a floor the package does not really support.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-lowest}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/uv" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check uv
fi
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --resolution lowest-direct -e ".[test]"
# The admin browser test's driver is a dev tool, not a declared dependency: the pinned one.
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" "$(grep -E '^playwright==' requirements-dev.txt)"
"$VENV/bin/uv" pip list --python "$VENV/bin/python" 2>/dev/null \
  | grep -iE '^(django|celery|kombu|tenacity|psycopg|psycopg-binary|pytest|pytest-django|pytest-celery|redis) ' \
  | sed 's/^/lowest: /'
