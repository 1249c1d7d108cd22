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
lives in ``claims/sql.py``, apart from this module's Python; it runs on PostgreSQL and on
SQLite >= 3.35 and holds no session state (no advisory locks, no ``SET``), so it works behind
PgBouncer in transaction mode.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.functions import Now
from django.utils import timezone

from celery_hygiene import conf

# Moved out (the lease side, the SQL); their old paths here are kept.
from celery_hygiene.claims.leases import Held as Held
from celery_hygiene.claims.leases import expire_lease as expire_lease
from celery_hygiene.claims.leases import renew as renew
from celery_hygiene.claims.leases import stale_claims as stale_claims
from celery_hygiene.claims.sql import (
    CLAIM_FIELDS,
    COMPLETE_MANY_SQL_POSTGRES,
    COMPLETE_SQL,
    INSERT_SQL,
    RECORD_FAILURE_SQL,
    RESTART_SQL,
    TAKE_OVER_SQL,
    complete_async,
    execute,
    existing_sql,
    render,
)
from celery_hygiene.claims.sql import write_alias as write_alias
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
        attempts = _returning(INSERT_SQL, params, using, lease_seconds)
        if attempts is None:
            existing = _existing(key, using)
            if existing is None:
                continue
            if _may_restart(existing, reclaim_after, reclaim_dead):
                completed = connections[using].ops.adapt_datetimefield_value(existing.completed_at)
                seen = {"seen_attempts": existing.attempts, "seen_completed": completed}
                attempts = _returning(RESTART_SQL, {**params, **seen}, using, lease_seconds)
            elif not _may_take_over(existing, key, owner_task_id, retry_token, any_fingerprint):
                return _describe(existing)
            else:
                seen = {"seen_attempts": existing.attempts, "any_fingerprint": any_fingerprint}
                attempts = _returning(TAKE_OVER_SQL, {**params, **seen}, using, lease_seconds)
        if attempts is not None:
            ticket = Ticket(key, owner_task_id, owner_worker, attempts, lease_seconds, using)
            return ClaimResult(Outcome.ACQUIRED, ticket=ticket)
    return ClaimResult(Outcome.IN_PROGRESS, wait_seconds=0.0)


def _returning(
    sql: str, params: dict[str, Any], using: str, lease_seconds: float | None
) -> int | None:
    rendered, clock = render(sql, using, lease_seconds=lease_seconds)
    row, _ = execute(using, rendered, {**params, **clock}, fetch=True)
    return None if row is None else int(row[0])


def _existing(key: ClaimKey, using: str) -> TaskClaim | None:
    connection = connections[using]
    if connection.vendor != "postgresql":
        # Other backends' claim writes stamp the worker's clock (sql.render), so "now" is read
        # from that clock too: SQLite's own has millisecond resolution, and a completion stamped
        # in the same millisecond would look as if it lay in the future.
        claim = (
            TaskClaim.objects.using(using)
            .filter(entity=key.entity, operation=key.operation)
            .first()
        )
        if claim is not None:
            claim.db_now = timezone.now()  # type: ignore[attr-defined]
        return claim
    sql = existing_sql(connection.ops.quote_name(TaskClaim._meta.db_table))
    row, _ = execute(using, sql, {"entity": key.entity, "operation": key.operation}, fetch=True)
    if row is None:
        return None
    existing = TaskClaim.from_db(using, [f.attname for f in CLAIM_FIELDS], row[:-1])
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
    sql, clock = render(COMPLETE_SQL, ticket.using, lease_seconds=None)
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
        return complete_async(connection, sql, params)
    _, rowcount = execute(ticket.using, sql, params, fetch=False)
    return rowcount == 1


@dataclass(frozen=True)
class Finished:
    """A completion to record in a batch (amortized completion, see ``worker/amortized.py``)."""

    entity: str
    operation: str
    owner_task_id: str
    attempts: int
    result_json: str | None


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
    sql = COMPLETE_MANY_SQL_POSTGRES.format(table=table)
    with connection.cursor() as cursor:  # once per batch: Django's cursor is cheap enough
        cursor.execute(sql, params)
        return {(str(e), str(o), str(t)) for e, o, t in cursor.fetchall()}


def _record_failure(ticket: Ticket, status: str, error: str, lease_seconds: float | None) -> bool:
    terminal = status == ClaimStatus.DEAD
    sql, params = render(
        RECORD_FAILURE_SQL, ticket.using, lease_seconds=lease_seconds, completed=terminal
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
    row, _ = execute(ticket.using, sql, params, fetch=True)
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
