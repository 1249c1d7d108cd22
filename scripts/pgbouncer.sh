#!/usr/bin/env bash
# A private PgBouncer in transaction mode in front of the local PostgreSQL, for the test leg
# that runs the worker tests through it (make test-pgbouncer). Installs the Debian package if
# missing; runs as the postgres user (PgBouncer refuses root); idempotent.
set -euo pipefail
PORT=${PGBOUNCER_PORT:-6440}
DIR=${PGBOUNCER_DIR:-/tmp/celery-hygiene-pgbouncer}
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  echo "pgbouncer: installing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq pgbouncer >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null; }
fi
BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if port_open "$PORT"; then echo "pgbouncer: already listening on $PORT"; exit 0; fi
mkdir -p "$DIR"
cat > "$DIR/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=${PGPORT:-5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
auth_type = trust
auth_file = $DIR/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
server_idle_timeout = 5
; The suite's outage tests expect an unreachable database to fail fast, as it does without
; PgBouncer: retry server logins every second (default 15 s) and fail a query that waited 5 s
; for a server connection (default 120 s). docs/brokers.md#pgbouncer has the trade-offs.
server_login_retry = 1
query_wait_timeout = 5
ignore_startup_parameters = extra_float_digits,options
pidfile = $DIR/pgbouncer.pid
logfile = $DIR/pgbouncer.log
INI
echo "\"${PGUSER:-postgres}\" \"\"" > "$DIR/userlist.txt"
chown -R postgres "$DIR" 2>/dev/null || true
if [ "$(id -u)" = 0 ]; then
  runuser -u postgres -- "$BIN" -d "$DIR/pgbouncer.ini"
else
  "$BIN" -d "$DIR/pgbouncer.ini"
fi
for _ in $(seq 1 30); do port_open "$PORT" && { echo "pgbouncer: listening on $PORT (transaction mode)"; exit 0; }; sleep 0.5; done
echo "pgbouncer: did not start; see $DIR/pgbouncer.log" >&2
exit 1
