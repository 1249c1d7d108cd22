#!/usr/bin/env bash
# Create .venv (if missing) and install the package with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt -e . 2>&1 \
  | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import celery_hygiene, celery, django, psycopg" 
