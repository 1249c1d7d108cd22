"""Enqueue intents: task messages written in the producer's transaction, re-sent until settled.

``task.delay_on_commit()`` (``task/enqueue.py``) writes one row here in the caller's transaction
and publishes the message after the COMMIT. The row is the message: if the producer dies after
the COMMIT, the publish fails, the broker drops the message, or a worker dies mid-body without
``acks_late``, a relay publishes it again with the same task id, and the claim turns any extra
copy into a no-op. The relay runs in every worker's main process (``worker/intent_relay.py``, on
the broker-I/O thread) and in ``manage.py taskhygiene relay``.

Settling costs the worker nothing: the relay looks at an intent only when it is due, reads the
claim it names, and deletes the intent once that claim is final (succeeded or dead). So every
row here is unsettled work, and the table holds only what is in flight.

What the relay does with a due intent, by the claim ``(entity, operation)`` it names:

- no claim: never published, lost on the way, or not taken yet: publish (again);
- claimed by this task id, final: settled (deleted);
- claimed by this task id, lease live (running, or a retry scheduled): look again at the lease's
  end or after ``ENQUEUE_RESEND_SECONDS``, whichever comes first; lease lapsed without
  completion (its worker died): publish again;
- claimed by another task id: final after this intent was written, or final and this key never
  runs twice (a plain ``idempotent_task``): settled; final before it and the key runs again
  (``singleton_task``, ``window=``): publish; running: look again at the lease's end.

Each send backs off (``ENQUEUE_RESEND_SECONDS`` doubled per send, with jitter, at most
``ENQUEUE_RESEND_MAX_DELAY``); past ``ENQUEUE_MAX_RESENDS`` sends the intent becomes a dead
letter with reason ``undeliverable`` (never a silent drop). Several relays never send one intent
at once: a relay takes due rows ``FOR UPDATE SKIP LOCKED`` and moves their next look into the
future in its own short commit, before any broker I/O.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, signature
from django.db import connections, router, transaction
from django.db.models import Count, Max, Min, Q
from django.utils import timezone
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from celery_hygiene import conf
from celery_hygiene.claims import state as claims
from celery_hygiene.events import log_event
from celery_hygiene.failures import deadletters
from celery_hygiene.models import (
    ClaimStatus,
    DeadLetter,
    DeadLetterReason,
    EnqueueIntent,
    TaskClaim,
)

# Marks a message sent for an intent. A hygienic_task (no claim of its own) that gets one
# takes a claim keyed by its task id, so a re-sent copy cannot run the body twice.
INTENT_HEADER = "celery_hygiene_intent"
TASK_ID_OPERATION = "intent:"
BATCH = 100
_FINAL = (ClaimStatus.SUCCEEDED, ClaimStatus.DEAD)


class PublishUndone(Exception):
    """The publish after COMMIT failed; the intent stays for the relay (never raised to callers)."""


def aliases() -> list[str]:
    """The databases intents are written to: ``ENQUEUE_DATABASES``, else the claims' alias."""
    configured = conf.get("ENQUEUE_DATABASES")
    if configured:
        return [str(alias) for alias in configured]
    return [router.db_for_write(EnqueueIntent)]


def task_id_operation(task_name: str) -> str:
    return f"{TASK_ID_OPERATION}{task_name}"[:255]


# -- the producer's side --------------------------------------------------------------------

_INSERT_SQL = """
INSERT INTO {table}
    (task_id, task_name, message, queue, entity, operation, unique_key, not_before, resends,
     next_attempt_at, created_at, last_error)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, %s, %s, '')
{conflict}
RETURNING task_id
"""
# Only the partial unique index's rows conflict: a second enqueue of a key that is still
# unsettled inserts nothing (and waits for the first transaction's COMMIT or ROLLBACK).
_ON_KEY_CONFLICT = "ON CONFLICT (entity, operation) WHERE unique_key DO NOTHING"


@dataclass
class Intent:
    task_name: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    entity: str = ""
    operation: str = ""
    unique_key: bool = False
    not_before: dt.datetime | None = None

    def message(self) -> str:
        return kombu_dumps({"args": self.args, "kwargs": self.kwargs, "options": self.options})

    def queue(self) -> str:
        queue = self.options.get("queue")
        return str(getattr(queue, "name", queue) or "")


def write(intent: Intent, *, using: str) -> str:
    """One INSERT (in the caller's transaction, if any); the task id that will run: this
    intent's, or for a key already enqueued and unsettled, the first intent's."""
    table = connections[using].ops.quote_name(EnqueueIntent._meta.db_table)
    sql = _INSERT_SQL.format(table=table, conflict=_ON_KEY_CONFLICT if intent.unique_key else "")
    now = timezone.now()
    due = (intent.not_before or now) + dt.timedelta(seconds=_resend_seconds())
    params: list[Any] = [
        intent.task_id,
        intent.task_name,
        intent.message(),
        intent.queue(),
        intent.entity,
        intent.operation,
        intent.unique_key,
        intent.not_before,
        due,
        now,
    ]
    for _ in range(3):
        with connections[using].cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is not None:
            return str(row[0])
        existing = (
            EnqueueIntent.objects.using(using)
            .filter(entity=intent.entity, operation=intent.operation, unique_key=True)
            .values_list("task_id", flat=True)
            .first()
        )
        if existing is not None:
            log_event(
                logging.INFO,
                "enqueue_joined",
                task=intent.task_name,
                id=existing,
                entity=intent.entity,
                operation=intent.operation,
            )
            return str(existing)
        # Settled between the INSERT and the SELECT: the key is free again.
    raise RuntimeError(f"{intent.task_name}: could not enqueue {intent.entity!r}")


def publish(
    app: Celery,
    task_name: str,
    task_id: str,
    args: Any,
    kwargs: Any,
    options: dict[str, Any],
    *,
    connection: Any = None,
) -> None:
    """Send the intent's message: its task id, routing and ETA, plus the intent header."""
    options = dict(options)
    for name in ("eta", "expires"):  # stored as ISO strings: absolute times
        if isinstance(options.get(name), str):
            options[name] = dt.datetime.fromisoformat(options[name])
    options["task_id"] = task_id
    options["headers"] = {**(options.get("headers") or {}), INTENT_HEADER: 1}
    sig = signature(task_name, args=tuple(args or ()), kwargs=dict(kwargs or {}), app=app)
    sig.apply_async(connection=connection, **options)


def publish_after_commit(app: Celery, intent: Intent) -> None:
    """The on-commit callback: a failure is logged and left to the relay, never raised."""
    try:
        publish(
            app,
            intent.task_name,
            intent.task_id,
            intent.args,
            intent.kwargs,
            intent.options,
        )
    except Exception as exc:  # noqa: BLE001 - the intent is committed: the relay re-sends it
        log_event(
            logging.WARNING,
            "enqueue_publish_failed",
            task=intent.task_name,
            id=intent.task_id,
            error=repr(exc),
            resend_in=_resend_seconds(),
        )


# -- the relay ------------------------------------------------------------------------------


@dataclass
class Round:
    sent: int = 0
    settled: int = 0
    waiting: int = 0
    undeliverable: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: Round) -> None:
        self.sent += other.sent
        self.settled += other.settled
        self.waiting += other.waiting
        self.undeliverable += other.undeliverable
        self.failed += other.failed
        self.errors += other.errors


@dataclass
class _Plan:
    intent: EnqueueIntent
    action: str  # "send", "settle", "wait", "undeliverable"


def relay(app: Celery, *, connection: Any = None, limit: int = BATCH) -> Round:
    """One round over every intent database: settle, wait, re-send or give up what is due."""
    total = Round()
    for using in aliases():
        total.add(relay_alias(app, using=using, connection=connection, limit=limit))
    return total


def relay_alias(app: Celery, *, using: str, connection: Any = None, limit: int = BATCH) -> Round:
    result = Round()
    plans = _take_due(app, using, limit)
    for plan in plans:
        intent = plan.intent
        if plan.action == "settle":
            result.settled += 1
        elif plan.action == "wait":
            result.waiting += 1
        elif plan.action == "undeliverable":
            result.undeliverable += 1
        elif result.failed:
            # The broker refused the last one: the rest would fail the same way. Their next
            # look was moved already; bring it back to soon.
            _postpone(intent, using, "not tried: the broker refused an earlier send", quick=True)
        else:
            try:
                message = kombu_loads(intent.message)
                publish(
                    app,
                    intent.task_name,
                    intent.task_id,
                    message.get("args"),
                    message.get("kwargs"),
                    message.get("options") or {},
                    connection=connection,
                )
            except Exception as exc:  # noqa: BLE001 - broker away: try again later
                result.failed += 1
                result.errors.append(repr(exc))
                _postpone(intent, using, repr(exc), quick=False)
                log_event(
                    logging.WARNING,
                    "enqueue_resend_failed",
                    task=intent.task_name,
                    id=intent.task_id,
                    error=repr(exc),
                )
                continue
            result.sent += 1
            log_event(
                logging.INFO,
                "enqueue_resent",
                task=intent.task_name,
                id=intent.task_id,
                resends=intent.resends,
                entity=intent.entity or None,
            )
    return result


def _take_due(app: Celery, using: str, limit: int) -> list[_Plan]:
    """Decide for each due intent, in one short transaction; sends happen after its COMMIT."""
    now = timezone.now()
    plans: list[_Plan] = []
    with transaction.atomic(using=using):
        due = list(
            EnqueueIntent.objects.using(using)
            .select_for_update(skip_locked=True)
            .filter(next_attempt_at__lte=now)
            .order_by("next_attempt_at")[:limit]
        )
        if not due:
            return plans
        found = _claims_of(due)
        settled: list[int] = []
        for intent in due:
            claim = found.get((intent.entity, intent.operation))
            action, until = _verdict(app, intent, claim, now)
            if action == "send" and intent.resends >= int(conf.get("ENQUEUE_MAX_RESENDS")):
                action = "undeliverable"
            plans.append(_Plan(intent, action))
            if action == "settle":
                settled.append(intent.pk)
            elif action == "wait":
                intent.next_attempt_at = until
                intent.save(update_fields=["next_attempt_at"])
            elif action == "undeliverable":
                _dead_letter(intent, claim, using)
                settled.append(intent.pk)
            else:
                intent.resends += 1
                intent.published_at = now
                intent.next_attempt_at = now + dt.timedelta(seconds=_backoff(intent.resends))
                intent.save(update_fields=["resends", "published_at", "next_attempt_at"])
        if settled:
            EnqueueIntent.objects.using(using).filter(pk__in=settled).delete()
    return plans


def _claims_of(intents: Iterable[EnqueueIntent]) -> dict[tuple[str, str], TaskClaim]:
    keys = {(i.entity, i.operation) for i in intents if i.entity}
    if not keys:
        return {}
    query = Q()
    for entity, operation in keys:
        query |= Q(entity=entity, operation=operation)
    rows = TaskClaim.objects.using(claims.write_alias()).filter(query)
    return {(row.entity, row.operation): row for row in rows}


def _verdict(
    app: Celery, intent: EnqueueIntent, claim: TaskClaim | None, now: dt.datetime
) -> tuple[str, dt.datetime]:
    resend = dt.timedelta(seconds=_resend_seconds())
    if claim is None:
        if intent.not_before is not None and intent.not_before > now:
            return "wait", intent.not_before + resend
        return "send", now
    mine = claim.owner_task_id == intent.task_id
    if claim.status in _FINAL:
        if mine or not _runs_again(app, intent.task_name):
            return "settle", now
        if claim.completed_at is not None and claim.completed_at >= intent.created_at:
            return "settle", now
        return "send", now
    lease = claim.lease_expires_at
    if lease is not None and lease > now:
        # Look again when the lease would lapse, or sooner (a live run usually ends first):
        # one indexed read per running intent and ENQUEUE_RESEND_SECONDS.
        return "wait", min(lease + dt.timedelta(seconds=1), now + resend)
    if mine:
        return "send", now  # its run's lease lapsed without completion: the run is gone
    return "wait", now + resend  # another run's lapsed lease: its own message takes it over


def _runs_again(app: Celery, task_name: str) -> bool:
    """A finished claim of this task's key lets a new message run (singleton, window=)."""
    task = app.tasks.get(task_name)
    spec = getattr(task, "hygiene_idempotency", None)
    return spec is None or bool(spec.singleton or spec.window is not None)


def _postpone(intent: EnqueueIntent, using: str, error: str, *, quick: bool) -> None:
    """Not sent after all: the send is not counted, and it is due again after a back-off."""
    delay = min(_resend_seconds(), 5.0) if quick else _backoff(intent.resends)
    EnqueueIntent.objects.using(using).filter(pk=intent.pk).update(
        resends=max(0, intent.resends - 1),
        last_error=error[:10_000],
        next_attempt_at=timezone.now() + dt.timedelta(seconds=delay),
    )


def _backoff(resends: int) -> float:
    base = _resend_seconds() * 2 ** min(max(resends - 1, 0), 20)
    delay = min(float(conf.get("ENQUEUE_RESEND_MAX_DELAY")), base)
    return float(delay * random.uniform(0.8, 1.2))


def _resend_seconds() -> float:
    return float(conf.get("ENQUEUE_RESEND_SECONDS"))


def _dead_letter(intent: EnqueueIntent, claim: TaskClaim | None, using: str) -> None:
    message = kombu_loads(intent.message)
    options = message.get("options") or {}
    now = timezone.now()
    reason = (
        f"sent {intent.resends} times since {intent.created_at:%Y-%m-%d %H:%M:%S} UTC and no "
        "run finished it (ENQUEUE_MAX_RESENDS)"
    )
    failed = deadletters.FailedTask(
        task_name=intent.task_name,
        task_id=intent.task_id,
        args=message.get("args") or [],
        kwargs=message.get("kwargs") or {},
        exception=PublishUndone(
            reason + (f"; last error: {intent.last_error}" if intent.last_error else "")
        ),
        reason=DeadLetterReason.UNDELIVERABLE,
        attempts=max(intent.resends, 1),
        first_failed_at=intent.created_at,
        last_failed_at=now,
        queue=intent.queue,
        exchange=str(options.get("exchange") or ""),
        routing_key=str(options.get("routing_key") or intent.queue),
        priority=options.get("priority"),
        headers={k: v for k, v in (options.get("headers") or {}).items() if k != INTENT_HEADER},
        entity=intent.entity if intent.unique_key else "",
        operation=intent.operation if intent.unique_key else "",
    )
    dead_letter = deadletters.store(failed)
    log_event(
        logging.ERROR, "enqueue_undeliverable", **failed.log_fields(), dead_letter=dead_letter.pk
    )


# -- what operators see ---------------------------------------------------------------------


@dataclass
class Summary:
    pending: int
    oldest_seconds: float | None
    resent: int
    resends: int
    undeliverable: int


def summary() -> Summary:
    pending = resent = resends = 0
    oldest: dt.datetime | None = None
    for using in aliases():
        row = EnqueueIntent.objects.using(using).aggregate(
            n=Count("pk"),
            oldest=Min("created_at"),
            resent=Count("pk", filter=Q(resends__gt=0)),
            resends=Max("resends"),
        )
        pending += row["n"] or 0
        resent += row["resent"] or 0
        resends = max(resends, row["resends"] or 0)
        if row["oldest"] is not None and (oldest is None or row["oldest"] < oldest):
            oldest = row["oldest"]
    undeliverable = (
        DeadLetter.objects.using(router.db_for_read(DeadLetter))
        .filter(reason=DeadLetterReason.UNDELIVERABLE, status="pending")
        .count()
    )
    age = (timezone.now() - oldest).total_seconds() if oldest is not None else None
    return Summary(pending, age, resent, resends, undeliverable)
