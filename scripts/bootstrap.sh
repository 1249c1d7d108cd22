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
# DJANGO_SPEC swaps the Django version for a second CI leg (e.g. "Django>=6.0,<6.2").
if [ -n "${DJANGO_SPEC:-}" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$DJANGO_SPEC" 2>&1 \
    | grep -v '^WARNING: Location' || true
fi
# The admin browser test drives Debian's Chromium through Playwright; Playwright's own browser
# download is never used (it needs network access CI machines do not have).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing chromium for the admin browser test"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
    || echo "bootstrap: could not install chromium; the browser test will be skipped" >&2
fi
"$VENV/bin/python" -c "import celery_hygiene, celery, django, psycopg" 
