"""The claim core's SQL, in one place: every hand-written statement, named and commented, and
how it is rendered for a backend and sent.

The state machine (``claims/state.py``) says when each statement runs; this module says what it
is. The ORM cannot say ``INSERT .. ON CONFLICT .. RETURNING`` with a compare-and-set, nor a
batch ``UPDATE .. FROM unnest(..)``; these run on PostgreSQL and on SQLite >= 3.35 (the
``_POSTGRES`` ones on PostgreSQL only, the callers fall back elsewhere) and hold no session state
(no advisory locks, no ``SET`` outside a transaction), so they work behind PgBouncer in
transaction mode.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from django.db import connections, router
from django.utils import timezone

from celery_hygiene import conf
from celery_hygiene.models import TaskClaim

# A free key is inserted; a taken one is left alone. DO NOTHING (not DO UPDATE .. WHERE false)
# matters: it takes no row lock and writes nothing, so a duplicate costs a read, not a commit.
INSERT_SQL = """
INSERT INTO {table}
    (entity, operation, task_name, status, fingerprint, owner_task_id, owner_worker,
     lease_expires_at, attempts, last_error, created_at, updated_at)
VALUES
    (%(entity)s, %(operation)s, %(task_name)s, 'running', %(fingerprint)s, %(owner)s, %(worker)s,
     {lease_until}, 1, '', {now}, {now})
ON CONFLICT (entity, operation) DO NOTHING
RETURNING attempts
"""

# PostgreSQL: the row that stopped the INSERT, and the database's clock (lease arithmetic).
# Hand-written: building the same query through the ORM cost more client CPU than the
# statement's round trip. (One statement for both, a CTE that inserts or returns the existing
# row, was measured and dropped: it made every first run ~0.2 ms slower to save about that
# much on each duplicate; docs/benchmarks.md.)
EXISTING_SQL = """
SELECT {columns}, statement_timestamp() FROM {table}
WHERE entity = %(entity)s AND operation = %(operation)s
"""


def write_alias() -> str:
    """The claim always goes to the write database: reading a replica could miss a claim."""
    return router.db_for_write(TaskClaim)


# Compare-and-set on the attempt number we read: of several racing takers exactly one wins.
TAKE_OVER_SQL = """
UPDATE {table} SET
    status = 'running',
    owner_task_id = %(owner)s,
    owner_worker = %(worker)s,
    lease_expires_at = {lease_until},
    -- other arguments (a singleton's next tick) are a new run: it gets the whole retry policy
    attempts = CASE WHEN fingerprint = %(fingerprint)s THEN attempts + 1 ELSE 1 END,
    fingerprint = %(fingerprint)s,
    updated_at = {now}
WHERE entity = %(entity)s AND operation = %(operation)s AND attempts = %(seen_attempts)s
  AND (
    -- the scheduled retry (or a replay) of the same task id picks its own claim back up
    (status = 'retrying' AND owner_task_id = %(owner)s)
    -- anyone with the same arguments (a singleton: any arguments) takes over a claim whose
    -- owner stopped renewing it
    OR (status IN ('running', 'retrying') AND lease_expires_at <= {now}
        AND (fingerprint = %(fingerprint)s OR %(any_fingerprint)s))
  )
RETURNING attempts
"""

# Recurring work (``window=``, singletons): a finished claim starts a new run. Attempts restart
# (a new run gets the whole retry policy); the compare-and-set on the finished row's attempts and
# completion time lets exactly one of several racing messages start it.
RESTART_SQL = """
UPDATE {table} SET
    status = 'running',
    owner_task_id = %(owner)s,
    owner_worker = %(worker)s,
    fingerprint = %(fingerprint)s,
    lease_expires_at = {lease_until},
    attempts = 1,
    result_json = NULL,
    last_error = '',
    completed_at = NULL,
    updated_at = {now}
WHERE entity = %(entity)s AND operation = %(operation)s AND attempts = %(seen_attempts)s
  AND status IN ('succeeded', 'dead') AND completed_at = %(seen_completed)s
RETURNING attempts
"""

COMPLETE_SQL = """
UPDATE {table} SET
    status = 'succeeded', result_json = %(result)s, completed_at = {now}, updated_at = {now},
    lease_expires_at = NULL, last_error = ''
WHERE entity = %(entity)s AND operation = %(operation)s AND owner_task_id = %(owner)s
  AND attempts = %(attempts)s AND status = 'running'
"""

# Failure bookkeeping is an upsert too: in atomic mode the acquiring INSERT was rolled back with
# the body, so the row may not exist any more; the attempt count must survive that rollback.
RECORD_FAILURE_SQL = """
INSERT INTO {table} AS c
    (entity, operation, task_name, status, fingerprint, owner_task_id, owner_worker,
     lease_expires_at, attempts, last_error, created_at, updated_at, completed_at)
VALUES
    (%(entity)s, %(operation)s, %(task_name)s, %(status)s, %(fingerprint)s, %(owner)s, %(worker)s,
     {lease_until}, %(attempts)s, %(error)s, {now}, {now}, {completed_at})
ON CONFLICT (entity, operation) DO UPDATE SET
    status = EXCLUDED.status,
    lease_expires_at = EXCLUDED.lease_expires_at,
    attempts = EXCLUDED.attempts,
    last_error = EXCLUDED.last_error,
    updated_at = EXCLUDED.updated_at,
    completed_at = EXCLUDED.completed_at
WHERE c.owner_task_id = EXCLUDED.owner_task_id
    AND c.status IN ('running', 'retrying')
    AND c.attempts <= EXCLUDED.attempts
RETURNING attempts
"""


@lru_cache(maxsize=64)
def _sql(template: str, vendor: str, table: str, leased: bool, completed: bool) -> str:
    """The statement text for one backend; built once per template, not once per task."""
    if vendor == "postgresql":
        now = "statement_timestamp()"
        lease_until = (
            "statement_timestamp() + %(lease_seconds)s * interval '1 second'" if leased else "NULL"
        )
    else:
        now, lease_until = "%(now)s", "%(lease_until)s"
    return template.format(
        table=table, now=now, lease_until=lease_until, completed_at=now if completed else "NULL"
    )


def render(
    sql: str, using: str, *, lease_seconds: float | None, completed: bool = False
) -> tuple[str, dict[str, Any]]:
    """Fill in table name and clock expressions (``completed`` only for the failure upsert).

    PostgreSQL uses its own clock so that workers on hosts with skewed clocks agree on when a
    lease ends; other backends get the worker's clock as a parameter.
    """
    connection = connections[using]
    vendor = connection.vendor
    table = connection.ops.quote_name(TaskClaim._meta.db_table)
    rendered = _sql(sql, vendor, table, lease_seconds is not None, completed)
    if vendor == "postgresql":
        return rendered, ({} if lease_seconds is None else {"lease_seconds": lease_seconds})
    current = timezone.now()
    params: dict[str, Any] = {"now": connection.ops.adapt_datetimefield_value(current)}
    params["lease_until"] = (
        None
        if lease_seconds is None
        else connection.ops.adapt_datetimefield_value(current + dt.timedelta(seconds=lease_seconds))
    )
    return rendered, params


def execute(using: str, sql: str, params: dict[str, Any], *, fetch: bool) -> tuple[Any, int]:
    """Run one claim statement: (first row or None, rowcount).

    On PostgreSQL the statement goes to psycopg directly with server-side binding (Django's
    cursor binds on the client, which cost about a third of the claim's client CPU), inside
    Django's error translation, so callers still see ``django.db`` errors. While something
    watches Django's queries (``connection.execute_wrapper``, ``DEBUG`` query logging,
    ``assertNumQueries``) the statements go through Django's cursor instead, so they are seen.

    With ``PREPARED_STATEMENTS`` the statements are also prepared, once per connection (psycopg
    keeps the cache per connection). Prepared statements are session state: behind PgBouncer in
    transaction mode they need PgBouncer >= 1.21 with ``max_prepared_statements`` set, which is
    why they are opt-in. Unprepared server-side binding uses the unnamed statement only, which
    any pooler passes through.
    """
    connection = connections[using]
    if (
        connection.vendor == "postgresql"
        and not connection.execute_wrappers
        and not connection.queries_logged
    ):
        return execute_direct(connection, sql, params, fetch=fetch)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return (cursor.fetchone() if fetch else None), cursor.rowcount


def execute_direct(
    connection: Any, sql: str, params: dict[str, Any], *, fetch: bool
) -> tuple[Any, int]:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:  # psycopg2 has no server-side binding: Django's cursor
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return (cursor.fetchone() if fetch else None), cursor.rowcount
    import psycopg

    prepare = bool(conf.get("PREPARED_STATEMENTS"))
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=prepare)
        return (cursor.fetchone() if fetch else None), cursor.rowcount


# Amortized completion: the completions of a whole batch in one statement, each fenced exactly
# like ``COMPLETE_SQL`` (owner task id and the attempt it acquired).
COMPLETE_MANY_SQL_POSTGRES = """
UPDATE {table} AS c SET
    status = 'succeeded', result_json = v.result, completed_at = statement_timestamp(),
    updated_at = statement_timestamp(), lease_expires_at = NULL, last_error = ''
FROM unnest(%(entities)s::text[], %(operations)s::text[], %(owners)s::text[],
            %(attempts)s::int[], %(results)s::text[])
     AS v(entity, operation, owner, attempts, result)
WHERE c.entity = v.entity AND c.operation = v.operation AND c.owner_task_id = v.owner
  AND c.attempts = v.attempts AND c.status = 'running'
RETURNING c.entity, c.operation, c.owner_task_id
"""


# ASYNC_COMPLETION: the same UPDATE in a transaction whose COMMIT does not wait for the WAL
# flush. Sent as one simple-query string, so it is still one round trip, and SET LOCAL ends
# with the transaction: no session state is left behind (PgBouncer in transaction mode is fine).
ASYNC_COMPLETE_SQL = (
    "BEGIN; SET LOCAL synchronous_commit TO off; {update} RETURNING attempts; COMMIT"
)


def complete_async(connection: Any, sql: str, params: dict[str, Any]) -> bool:
    """Record success without waiting for the flush (opt-in, ``ASYNC_COMPLETION``).

    The row is visible to every other session at once, so duplicates see ``succeeded`` as
    usual. What changes is a PostgreSQL *server* crash (or an OS crash of its host) in the
    next few hundred milliseconds (up to 3 x ``wal_writer_delay``, 200 ms by default): the
    completion can be lost, the claim is back to ``running`` with its lease, and a duplicate or
    redelivery that arrives after the lease ran out runs the body again. The body's own writes,
    committed before, are flushed. A worker crash loses nothing: the server has the commit.
    """
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return bool(cursor.rowcount == 1)
    import psycopg

    statement = ASYNC_COMPLETE_SQL.format(update=sql.strip())
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    pg = connection.connection
    with connection.wrap_database_errors:
        try:
            with psycopg.ClientCursor(pg) as cursor:
                cursor.execute(statement, params)
                updated = False
                while True:  # BEGIN, SET, UPDATE .. RETURNING, COMMIT: one result each
                    if cursor.description is not None:
                        updated = cursor.fetchone() is not None
                    if not cursor.nextset():
                        break
                return updated
        finally:
            if pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                pg.rollback()  # an error inside the string left the block open: close it


# One statement renews every claim a worker holds, whatever the number of running tasks. Matched
# by the unique (entity, operation) index and fenced by owner and worker: a claim that was taken
# over, completed or released is not touched.
RENEW_SQL_POSTGRES = """
UPDATE {table} AS c SET
    lease_expires_at = statement_timestamp() + v.lease_seconds * interval '1 second'
FROM unnest(%(entities)s::text[], %(operations)s::text[], %(owners)s::text[],
            %(leases)s::float8[]) AS v(entity, operation, owner, lease_seconds)
WHERE c.entity = v.entity AND c.operation = v.operation AND c.owner_task_id = v.owner
  AND c.owner_worker = %(worker)s AND c.status = 'running'
"""


CLAIM_FIELDS = list(TaskClaim._meta.concrete_fields)


@lru_cache(maxsize=8)
def existing_sql(table: str) -> str:
    columns = ", ".join(str(f.column) for f in CLAIM_FIELDS)
    return EXISTING_SQL.format(columns=columns, table=table)
