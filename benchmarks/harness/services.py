"""The services a run uses: the scratch PostgreSQL databases (this tree's, and the one migrated by
the ``--before-ref`` library, exported with ``git archive``), plain SQL on them, the private
RabbitMQ queue, and the Redis the workers' signal handlers write their timings to."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.config import BEFORE_DB, BENCH_DIR, QUEUE, REPO


def recreate_database(name: str) -> None:
    import psycopg

    dsn = dict(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=os.environ.get("PGPORT", "5432"),
        user=os.environ.get("PGUSER", "postgres"),
        password=os.environ.get("PGPASSWORD", ""),
        dbname="postgres",
    )
    with psycopg.connect(**dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup_django() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)


def sql(statement: str, params: object = None, fetch: bool = False) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if fetch else []


def truncate(*models: type, using: str = "default") -> None:
    from django.db import connections

    tables = ", ".join(m._meta.db_table for m in models)
    with connections[using].cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY")


def export_before(ref: str) -> Path:
    """``git archive`` of the library at ``ref`` into a temporary directory (its src/ only)."""
    target = Path(tempfile.mkdtemp(prefix="bench-before-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def migrate_before(src: Path) -> None:
    """Create the 'before' database with the migrations of the exported library."""
    recreate_database(BEFORE_DB)
    env = {
        **os.environ,
        "BENCH_DB_NAME": BEFORE_DB,
        "PYTHONPATH": os.pathsep.join([str(src), str(BENCH_DIR)]),
    }
    env.pop("BENCH_DB_BEFORE", None)
    code = (
        "import django; django.setup(); from django.core.management import call_command; "
        "call_command('migrate', run_syncdb=True, verbosity=0)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=BENCH_DIR, env=env, check=True)


def declare_queue() -> None:
    from benchproject.celery import app

    with app.connection_for_write() as conn:
        app.amqp.queues.select_add(QUEUE)
        app.amqp.queues[QUEUE].bind(conn.default_channel).declare()
        conn.default_channel.queue_purge(QUEUE)


def delete_queue() -> None:
    from benchproject.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(QUEUE)


def redis():  # noqa: ANN201
    from benchproject.celery import redis_client

    return redis_client()
