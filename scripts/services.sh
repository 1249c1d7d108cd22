#!/usr/bin/env bash
# Make sure PostgreSQL, RabbitMQ and Redis answer on their local ports; install them on a fresh
# Debian/Ubuntu machine and start any that is down. Idempotent: safe to run before every command.
set -euo pipefail

need_install=()
command -v pg_ctlcluster >/dev/null 2>&1 || need_install+=(postgresql postgresql-client)
command -v rabbitmq-server >/dev/null 2>&1 || need_install+=(rabbitmq-server)
command -v redis-server >/dev/null 2>&1 || need_install+=(redis-server redis-tools)
if [ ${#need_install[@]} -gt 0 ]; then
  echo "services: installing ${need_install[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_install[@]}" >/dev/null
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # name port seconds
  for _ in $(seq 1 "$3"); do port_open "$2" && return 0; sleep 1; done
  echo "services: $1 did not open port $2 within $3 s" >&2; return 1
}

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! port_open 5672; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
fi
wait_port PostgreSQL 5432 60
wait_port Redis 6379 30
wait_port RabbitMQ 5672 120
for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done

# Fresh Debian installs use scram over TCP and have no role for us: make the superuser reachable
# the way the settings expect (trust on loopback is what this project's machines ship with).
if ! psql -h 127.0.0.1 -U "${PGUSER:-postgres}" -d postgres -Atc 'select 1' >/dev/null 2>&1; then
  if command -v runuser >/dev/null 2>&1 && id postgres >/dev/null 2>&1; then
    hba=$(runuser -u postgres -- psql -Atc 'show hba_file')
    if ! grep -q 'celery-hygiene' "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust # celery-hygiene local development' "$hba"
      runuser -u postgres -- psql -qAtc 'select pg_reload_conf()' >/dev/null
    fi
  fi
fi
psql -h 127.0.0.1 -U "${PGUSER:-postgres}" -d postgres -Atc 'select 1' >/dev/null
# The development database the example project and pytest-django's template connect to.
db=${HYGIENE_DB_NAME:-celery_hygiene}
psql -h 127.0.0.1 -U "${PGUSER:-postgres}" -d postgres -Atc "select 1 from pg_database where datname='$db'" | grep -q 1 \
  || createdb -h 127.0.0.1 -U "${PGUSER:-postgres}" "$db"
echo "services: PostgreSQL, Redis and RabbitMQ are up"
