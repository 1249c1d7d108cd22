"""The claim state machine: who may run the body for one ``(entity, operation)``.

No Celery import lives here; the Celery glue (``task/hygiene_task.py``) calls these functions.

::

    (no row) ──acquire──▶ running ──complete──▶ succeeded      (duplicates read the result)
                          │   ▲
    release_for_retry ────┘   └── acquire: same task id (the retry message), or anyone once
                          ▼       the lease has expired (takeover after a crash)
                       retrying
    running / retrying ──mark_dead──▶ dead ──reopen (replay)──▶ retrying, owned by the replay

Every acquisition bumps ``attempts``. That number is the fencing token: ``complete`` and the
failure updates only touch the row if the caller still holds the attempt it acquired, so a worker
whose lease was taken over cannot overwrite the new owner's outcome. The same number travels on
the scheduled retry's message (``retry_token``): only that message picks a ``retrying`` claim back
up, so a re-sent copy of the original message (same task id) cannot fork the retry chain.

Leases are heartbeats: while a body runs, the worker's main process renews its claims
(:func:`renew`, one statement per worker per interval, see ``worker/leases.py``). A live owner never
loses its claim however long it runs; a dead owner's claim lapses within one lease.

Acquiring is ``INSERT .. ON CONFLICT DO NOTHING RETURNING`` (the unique constraint decides who
is first), then, only if the key was taken, a read, and only if that read shows a retry of our
own task id or an expired lease, a compare-and-set ``UPDATE .. WHERE attempts = <seen>``. So a
first run costs one statement, a duplicate one more read and no write. The hand-written SQL
lives in this module only; it runs on PostgreSQL and on SQLite >= 3.35 and holds no session
state (no advisory locks, no ``SET``), so it works behind PgBouncer in transaction mode.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.db import connections, router
from django.db.models import DateTimeField, ExpressionWrapper, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from celery_hygiene import conf
from celery_hygiene.models import ClaimStatus, TaskClaim


@dataclass(frozen=True)
class ClaimKey:
    entity: str
    operation: str
    task_name: str
    fingerprint: str


@dataclass(frozen=True)
class Ticket:
    """Proof of ownership returned by a successful :func:`acquire`."""

    key: ClaimKey
    owner_task_id: str
    owner_worker: str
    attempts: int
    lease_seconds: float
    using: str


class Outcome(enum.Enum):
    ACQUIRED = "acquired"
    SUCCEEDED = "succeeded"  # a duplicate: the body already ran
    IN_PROGRESS = "in_progress"  # someone else holds a live lease
    DEAD = "dead"  # dead-lettered; only a replay re-opens it


@dataclass(frozen=True)
class ClaimResult:
    outcome: Outcome
    ticket: Ticket | None = None
    existing: TaskClaim | None = None
    # For IN_PROGRESS: seconds until the holder's lease expires (never negative).
    wait_seconds: float = 0.0


def write_alias() -> str:
    """The claim always goes to the write database: reading a replica could miss a claim."""
    return router.db_for_write(TaskClaim)


# A free key is inserted; a taken one is left alone. DO NOTHING (not DO UPDATE .. WHERE false)
# matters: it takes no row lock and writes nothing, so a duplicate costs a read, not a commit.
_INSERT_SQL = """
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
_EXISTING_SQL = """
SELECT {columns}, statement_timestamp() FROM {table}
WHERE entity = %(entity)s AND operation = %(operation)s
"""


# Compare-and-set on the attempt number we read: of several racing takers exactly one wins.
_TAKE_OVER_SQL = """
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
_RESTART_SQL = """
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

_COMPLETE_SQL = """
UPDATE {table} SET
    status = 'succeeded', result_json = %(result)s, completed_at = {now}, updated_at = {now},
    lease_expires_at = NULL, last_error = ''
WHERE entity = %(entity)s AND operation = %(operation)s AND owner_task_id = %(owner)s
  AND attempts = %(attempts)s AND status = 'running'
"""

# Failure bookkeeping is an upsert too: in atomic mode the acquiring INSERT was rolled back with
# the body, so the row may not exist any more; the attempt count must survive that rollback.
_RECORD_FAILURE_SQL = """
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


def _render(
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


def _execute(using: str, sql: str, params: dict[str, Any], *, fetch: bool) -> tuple[Any, int]:
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
        return _execute_direct(connection, sql, params, fetch=fetch)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return (cursor.fetchone() if fetch else None), cursor.rowcount


def _execute_direct(
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


def acquire(
    key: ClaimKey,
    *,
    owner_task_id: str,
    owner_worker: str,
    lease_seconds: float,
    using: str,
    retry_token: int | None = None,
    reclaim_after: float | None = None,
    reclaim_dead: bool = False,
    any_fingerprint: bool = False,
) -> ClaimResult:
    """Try to own the claim.

    One round trip when the key is free; a duplicate costs one more read and writes nothing; a
    retry or a takeover adds a compare-and-set UPDATE. ``retry_token`` is the attempt number the
    scheduled retry was released at (carried in its message); None for any other message.

    Recurring work: with ``reclaim_after`` (seconds), a claim that succeeded at least that long
    ago starts a new run instead of answering "duplicate"; with ``reclaim_dead`` a dead claim
    does too (singletons: a failed run must not block the next one until a replay).
    ``any_fingerprint`` (singletons) lets a message with other arguments take over a claim
    whose lease expired: a singleton is about one run at a time, not about these arguments, so
    a crashed run must not block later ticks that carry other arguments.
    """
    params = {
        "entity": key.entity,
        "operation": key.operation,
        "task_name": key.task_name,
        "fingerprint": key.fingerprint,
        "owner": owner_task_id,
        "worker": owner_worker,
    }
    for _ in range(3):  # a row can vanish (atomic rollback) or be taken between our statements
        attempts = _returning(_INSERT_SQL, params, using, lease_seconds)
        if attempts is None:
            existing = _existing(key, using)
            if existing is None:
                continue
            if _may_restart(existing, reclaim_after, reclaim_dead):
                completed = connections[using].ops.adapt_datetimefield_value(existing.completed_at)
                seen = {"seen_attempts": existing.attempts, "seen_completed": completed}
                attempts = _returning(_RESTART_SQL, {**params, **seen}, using, lease_seconds)
            elif not _may_take_over(existing, key, owner_task_id, retry_token, any_fingerprint):
                return _describe(existing)
            else:
                seen = {"seen_attempts": existing.attempts, "any_fingerprint": any_fingerprint}
                attempts = _returning(_TAKE_OVER_SQL, {**params, **seen}, using, lease_seconds)
        if attempts is not None:
            ticket = Ticket(key, owner_task_id, owner_worker, attempts, lease_seconds, using)
            return ClaimResult(Outcome.ACQUIRED, ticket=ticket)
    return ClaimResult(Outcome.IN_PROGRESS, wait_seconds=0.0)


def _returning(
    sql: str, params: dict[str, Any], using: str, lease_seconds: float | None
) -> int | None:
    rendered, clock = _render(sql, using, lease_seconds=lease_seconds)
    row, _ = _execute(using, rendered, {**params, **clock}, fetch=True)
    return None if row is None else int(row[0])


_CLAIM_FIELDS = list(TaskClaim._meta.concrete_fields)


@lru_cache(maxsize=8)
def _existing_sql(table: str) -> str:
    columns = ", ".join(str(f.column) for f in _CLAIM_FIELDS)
    return _EXISTING_SQL.format(columns=columns, table=table)


def _existing(key: ClaimKey, using: str) -> TaskClaim | None:
    connection = connections[using]
    if connection.vendor != "postgresql":
        return (
            TaskClaim.objects.using(using)
            .annotate(db_now=Now())
            .filter(entity=key.entity, operation=key.operation)
            .first()
        )
    sql = _existing_sql(connection.ops.quote_name(TaskClaim._meta.db_table))
    row, _ = _execute(using, sql, {"entity": key.entity, "operation": key.operation}, fetch=True)
    if row is None:
        return None
    existing = TaskClaim.from_db(using, [f.attname for f in _CLAIM_FIELDS], row[:-1])
    existing.db_now = row[-1]  # type: ignore[attr-defined]
    return existing


def _may_take_over(
    existing: TaskClaim,
    key: ClaimKey,
    owner_task_id: str,
    retry_token: int | None,
    any_fingerprint: bool = False,
) -> bool:
    """The same rules as the UPDATE's WHERE: read first, so duplicates never write.

    A ``retrying`` claim goes back to its own task id only through the message that carries the
    attempt it was released at (or, after a replay re-opened it at 0 attempts, the replay's
    message). A re-sent copy of an older message with the same id waits like any duplicate.
    """
    if (
        existing.status == ClaimStatus.RETRYING
        and existing.owner_task_id == owner_task_id
        and (existing.attempts == 0 or retry_token == existing.attempts)
    ):
        return True
    return (
        existing.status in (ClaimStatus.RUNNING, ClaimStatus.RETRYING)
        and existing.lease_expires_at is not None
        and existing.lease_expires_at <= existing.db_now  # type: ignore[attr-defined]
        and (any_fingerprint or existing.fingerprint == key.fingerprint)
    )


def _may_restart(existing: TaskClaim, reclaim_after: float | None, reclaim_dead: bool) -> bool:
    if existing.completed_at is None:
        return False
    if existing.status == ClaimStatus.DEAD:
        return reclaim_dead
    if existing.status != ClaimStatus.SUCCEEDED or reclaim_after is None:
        return False
    db_now: dt.datetime = existing.db_now  # type: ignore[attr-defined]  # annotated in _existing
    return (db_now - existing.completed_at).total_seconds() >= reclaim_after


def _describe(existing: TaskClaim) -> ClaimResult:
    if existing.status == ClaimStatus.SUCCEEDED:
        return ClaimResult(Outcome.SUCCEEDED, existing=existing)
    if existing.status == ClaimStatus.DEAD:
        return ClaimResult(Outcome.DEAD, existing=existing)
    wait = 0.0
    if existing.lease_expires_at is not None:
        db_now = existing.db_now  # type: ignore[attr-defined]  # annotated in _existing
        wait = max(0.0, (existing.lease_expires_at - db_now).total_seconds())
    return ClaimResult(Outcome.IN_PROGRESS, existing=existing, wait_seconds=wait)


def complete(ticket: Ticket, result_json: str | None) -> bool:
    """Record success. False if the lease was taken over meanwhile (the caller logs it).

    Hand-written rather than an ORM update(): this runs once per task, and building the ORM
    query cost more than the statement itself.
    """
    sql, clock = _render(_COMPLETE_SQL, ticket.using, lease_seconds=None)
    params = {
        "result": result_json,
        "entity": ticket.key.entity,
        "operation": ticket.key.operation,
        "owner": ticket.owner_task_id,
        "attempts": ticket.attempts,
        **clock,
    }
    connection = connections[ticket.using]
    if (
        conf.get("ASYNC_COMPLETION")
        and connection.vendor == "postgresql"
        and not connection.in_atomic_block
        and connection.get_autocommit()  # its own BEGIN .. COMMIT must not end a caller's
    ):
        return _complete_async(connection, sql, params)
    _, rowcount = _execute(ticket.using, sql, params, fetch=False)
    return rowcount == 1


@dataclass(frozen=True)
class Finished:
    """A completion to record in a batch (amortized completion, see ``worker/amortized.py``)."""

    entity: str
    operation: str
    owner_task_id: str
    attempts: int
    result_json: str | None


# Amortized completion: the completions of a whole batch in one statement, each fenced exactly
# like ``_COMPLETE_SQL`` (owner task id and the attempt it acquired).
_COMPLETE_MANY_SQL_POSTGRES = """
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


def complete_many(finished: Sequence[Finished], *, using: str) -> set[tuple[str, str, str]]:
    """Record many successes; returns ``(entity, operation, owner)`` of those still ours."""
    if not finished:
        return set()
    connection = connections[using]
    if connection.vendor != "postgresql":  # other backends: one fenced UPDATE each
        done: set[tuple[str, str, str]] = set()
        for f in finished:
            ticket = Ticket(
                ClaimKey(f.entity, f.operation, "", ""), f.owner_task_id, "", f.attempts, 0, using
            )
            if complete(ticket, f.result_json):
                done.add((f.entity, f.operation, f.owner_task_id))
        return done
    table = connection.ops.quote_name(TaskClaim._meta.db_table)
    params: dict[str, Any] = {
        "entities": [f.entity for f in finished],
        "operations": [f.operation for f in finished],
        "owners": [f.owner_task_id for f in finished],
        "attempts": [f.attempts for f in finished],
        "results": [f.result_json for f in finished],
    }
    sql = _COMPLETE_MANY_SQL_POSTGRES.format(table=table)
    with connection.cursor() as cursor:  # once per batch: Django's cursor is cheap enough
        cursor.execute(sql, params)
        return {(str(e), str(o), str(t)) for e, o, t in cursor.fetchall()}


# ASYNC_COMPLETION: the same UPDATE in a transaction whose COMMIT does not wait for the WAL
# flush. Sent as one simple-query string, so it is still one round trip, and SET LOCAL ends
# with the transaction: no session state is left behind (PgBouncer in transaction mode is fine).
_ASYNC_COMPLETE_SQL = (
    "BEGIN; SET LOCAL synchronous_commit TO off; {update} RETURNING attempts; COMMIT"
)


def _complete_async(connection: Any, sql: str, params: dict[str, Any]) -> bool:
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

    statement = _ASYNC_COMPLETE_SQL.format(update=sql.strip())
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


def _record_failure(ticket: Ticket, status: str, error: str, lease_seconds: float | None) -> bool:
    terminal = status == ClaimStatus.DEAD
    sql, params = _render(
        _RECORD_FAILURE_SQL, ticket.using, lease_seconds=lease_seconds, completed=terminal
    )
    params.update(
        entity=ticket.key.entity,
        operation=ticket.key.operation,
        task_name=ticket.key.task_name,
        fingerprint=ticket.key.fingerprint,
        owner=ticket.owner_task_id,
        worker=ticket.owner_worker,
        status=status,
        attempts=ticket.attempts,
        error=error[:10_000],
    )
    row, _ = _execute(ticket.using, sql, params, fetch=True)
    return row is not None


def release_for_retry(ticket: Ticket, *, countdown: float, error: str) -> bool:
    """Hand the claim to the scheduled retry of the same task id.

    The lease is extended past the retry's ETA, so duplicates keep waiting instead of taking over
    while the retry is still on its way.
    """
    return _record_failure(
        ticket, ClaimStatus.RETRYING, error, lease_seconds=countdown + ticket.lease_seconds
    )


def forget(ticket: Ticket) -> bool:
    """Delete the claim as if it never was (eager mode: no retry will come to resume it)."""
    deleted, _ = (
        TaskClaim.objects.using(ticket.using)
        .filter(
            entity=ticket.key.entity,
            operation=ticket.key.operation,
            owner_task_id=ticket.owner_task_id,
            attempts=ticket.attempts,
        )
        .exclude(status=ClaimStatus.SUCCEEDED)
        .delete()
    )
    return bool(deleted)


def mark_dead(ticket: Ticket, *, error: str) -> bool:
    """Close the claim for good: duplicates stop here until an operator replays the dead letter."""
    return _record_failure(ticket, ClaimStatus.DEAD, error, lease_seconds=None)


def reopen(
    entity: str,
    operation: str,
    *,
    owner_task_id: str,
    lease_seconds: float,
    using: str | None = None,
) -> bool:
    """Let a replay (a new task id) run the body once more: dead -> retrying, owned by the replay.

    Attempts restart, because the replay gets the full retry policy again.
    """
    using = using or write_alias()
    return bool(
        TaskClaim.objects.using(using)
        .filter(entity=entity, operation=operation, status=ClaimStatus.DEAD)
        .update(
            status=ClaimStatus.RETRYING,
            owner_task_id=owner_task_id,
            owner_worker="",
            attempts=0,
            completed_at=None,
            updated_at=Now(),
            lease_expires_at=ExpressionWrapper(
                Now() + dt.timedelta(seconds=lease_seconds), output_field=DateTimeField()
            ),
        )
    )


def mark_dead_for_owner(
    entity: str,
    operation: str,
    *,
    owner_task_id: str,
    error: str,
    worker: str | None = None,
    using: str | None = None,
) -> int:
    """Close a claim from outside the task (the worker's main process after a hard kill).

    Fenced like every other write: only while this task id, on this ``worker``, still owns the
    claim (the main process does not know the attempt number). Returns the attempt count the
    claim had, or 0 if it was no longer ours. Call it inside the dead letter's transaction
    (``deadletters.store`` ``also=``) so the claim and its dead letter are written together or
    not at all.
    """
    using = using or write_alias()
    rows = TaskClaim.objects.using(using).filter(
        entity=entity,
        operation=operation,
        owner_task_id=owner_task_id,
        status__in=[ClaimStatus.RUNNING, ClaimStatus.RETRYING],
    )
    if worker:  # a copy with the same task id may have taken the claim over on another worker
        rows = rows.filter(owner_worker=worker)
    claim = rows.select_for_update().only("pk", "attempts").first()
    if claim is None:
        return 0
    TaskClaim.objects.using(using).filter(pk=claim.pk).update(
        status=ClaimStatus.DEAD,
        last_error=error[:10_000],
        completed_at=Now(),
        updated_at=Now(),
        lease_expires_at=None,
    )
    return claim.attempts


@dataclass(frozen=True)
class Held:
    """A claim the worker's main process believes one of its pool processes is running."""

    entity: str
    operation: str
    owner_task_id: str
    lease_seconds: float


# One statement renews every claim a worker holds, whatever the number of running tasks. Matched
# by the unique (entity, operation) index and fenced by owner and worker: a claim that was taken
# over, completed or released is not touched.
_RENEW_SQL_POSTGRES = """
UPDATE {table} AS c SET
    lease_expires_at = statement_timestamp() + v.lease_seconds * interval '1 second'
FROM unnest(%(entities)s::text[], %(operations)s::text[], %(owners)s::text[],
            %(leases)s::float8[]) AS v(entity, operation, owner, lease_seconds)
WHERE c.entity = v.entity AND c.operation = v.operation AND c.owner_task_id = v.owner
  AND c.owner_worker = %(worker)s AND c.status = 'running'
"""


def renew(held: list[Held], *, worker: str, using: str | None = None) -> int:
    """Push the leases of running claims forward (the heartbeat). Returns rows renewed."""
    if not held:
        return 0
    using = using or write_alias()
    connection = connections[using]
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(TaskClaim._meta.db_table)
        params: dict[str, Any] = {
            "entities": [h.entity for h in held],
            "operations": [h.operation for h in held],
            "owners": [h.owner_task_id for h in held],
            "leases": [float(h.lease_seconds) for h in held],
            "worker": worker,
        }
        _, rowcount = _execute(using, _RENEW_SQL_POSTGRES.format(table=table), params, fetch=False)
        return int(rowcount)
    renewed = 0  # other backends (SQLite in development): one UPDATE per claim
    for h in held:
        renewed += (
            TaskClaim.objects.using(using)
            .filter(
                entity=h.entity,
                operation=h.operation,
                owner_task_id=h.owner_task_id,
                owner_worker=worker,
                status=ClaimStatus.RUNNING,
            )
            .update(lease_expires_at=timezone.now() + dt.timedelta(seconds=h.lease_seconds))
        )
    return renewed


def expire_lease(
    entity: str, operation: str, *, owner_task_id: str, worker: str, using: str | None = None
) -> bool:
    """End a lease now: the worker saw the process running the body die, so nobody holds it.

    The redelivered message (or a duplicate) can then take the claim over at once instead of
    waiting out the lease. The attempt counter is untouched: the takeover bumps it.
    """
    using = using or write_alias()
    return bool(
        TaskClaim.objects.using(using)
        .filter(
            entity=entity,
            operation=operation,
            owner_task_id=owner_task_id,
            owner_worker=worker,
            status=ClaimStatus.RUNNING,
        )
        .update(lease_expires_at=Now())
    )


def stale_claims(*, expired_for: dt.timedelta, using: str | None = None) -> QuerySet[TaskClaim]:
    """Claims whose owner stopped renewing them long ago and that nobody has taken over.

    Such a row is work that started and never finished, with no message left to finish it
    (acknowledged early, then the worker died). The next duplicate would take it over; until
    then an operator should see it. No index serves it (an index on status or lease_expires_at
    would make every completion a non-HOT update, see models.py): a sequential scan, for a
    command an operator runs by hand.
    """
    using = using or write_alias()
    return (
        TaskClaim.objects.using(using)
        .filter(
            status__in=[ClaimStatus.RUNNING, ClaimStatus.RETRYING],
            lease_expires_at__lt=timezone.now() - expired_for,
        )
        .order_by("lease_expires_at")
    )
