#!/usr/bin/env bash
# Set up the example project and run it end to end: migrate, start one worker per queue,
# drive every feature (demo.py), stop the workers. Called by `make example`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DJANGO_SETTINGS_MODULE=example_worker.settings
DB=${EXAMPLE_DB_NAME:-celery_hygiene_example}
LOGS=${EXAMPLE_LOG_DIR:-/tmp/celery-hygiene-example}
mkdir -p "$LOGS"

psql -h 127.0.0.1 -U "${PGUSER:-postgres}" -d postgres -Atc "select 1 from pg_database where datname='$DB'" | grep -q 1 \
  || createdb -h 127.0.0.1 -U "${PGUSER:-postgres}" "$DB"
"$PY" example_worker/manage.py migrate --noinput -v 0

pids=()
stop_workers() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
trap stop_workers EXIT

start_worker() { # queue concurrency
  setsid "$PY" -m celery -A example_worker worker -Q "$1" -c "$2" -n "$1@%h" \
    --without-gossip --without-mingle --loglevel=INFO >"$LOGS/$1.log" 2>&1 &
  pids+=($!)
}
# One worker per queue, as in production (README "Deployment"):
start_worker fast 4
start_worker slow 1
start_worker bounded 2
for queue in fast slow bounded; do
  for _ in $(seq 1 120); do grep -q " ready." "$LOGS/$queue.log" 2>/dev/null && break; sleep 0.5; done
  grep -q " ready." "$LOGS/$queue.log" || { echo "worker $queue did not start:"; cat "$LOGS/$queue.log"; exit 1; }
done
echo "workers up: fast (-c 4), slow (-c 1), bounded (-c 2); logs in $LOGS"

"$PY" example_worker/demo.py
echo
echo "Structured events from the workers:"
grep -hE "task_(duplicate|retry_scheduled|dead_lettered|over_duration|claim_busy)" "$LOGS"/*.log | head -20 || true
