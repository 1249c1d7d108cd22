"""Messages that must not be lost when the broker refuses a publish.

A retry, a deferred duplicate or a claim that waits out a database outage is a *new* message;
the delivery that asked for it is acknowledged right after. If that publish fails and nothing
else keeps the work, the work is gone. So the message is parked here (in the same PostgreSQL
that holds the claims) and re-sent by every worker's main process (``OUTBOX_SWEEP_SECONDS``) or
by ``manage.py taskhygiene resend``.

At most one run per parked row, claim or no claim. A sweep marks the row as sent in its own
commit *before* publishing (so no other sweep sends it meanwhile), and the message carries the
row's id (header ``celery_hygiene_outbox_row``). The row is the message's ticket: the task
deletes it before its body runs, and a copy that finds it gone runs nothing
(``outbox_copy_skipped``). So a sweep whose connection drops after the publish, or a row sent
again because its message was not taken within ``UNTAKEN_RESEND_SECONDS``, costs a skipped copy,
never a second run. A message the broker accepted and then lost is sent again after that time.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import Celery, Signature, signature, uuid
from django.db import DatabaseError, router, transaction
from django.db.models import F
from django.utils import timezone
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from celery_hygiene.events import log_event
from celery_hygiene.models import OutboxMessage

BATCH = 100
# The header that ties a re-sent message to its row; never copied into a follow-up message.
ROW_HEADER = "celery_hygiene_outbox_row"
# A sent row whose message no task has taken after this long (past its ETA) is sent again:
# the broker may have lost it. Doubles with each send, up to about a day. Such a row is never
# dropped: its copies may still wait in a queue nobody consumes, and they need it to run.
UNTAKEN_RESEND_SECONDS = 600.0


def park(sig: Signature, *, reason: str, error: BaseException) -> OutboxMessage:
    """Store a signature that could not be published; its countdown becomes an absolute ETA,
    and it gets a task id if it had none."""
    data = dict(sig)
    options = dict(data.get("options") or {})
    # Every copy sent for this row is the same task (one result, one id in the logs).
    options["task_id"] = options.get("task_id") or uuid()
    countdown = options.pop("countdown", None)
    if countdown and not options.get("eta"):
        options["eta"] = (timezone.now() + dt.timedelta(seconds=float(countdown))).isoformat()
    data["options"] = options
    using = router.db_for_write(OutboxMessage)
    return OutboxMessage.objects.using(using).create(
        task_name=str(data.get("task", "")),
        task_id=str(options.get("task_id", "")),
        reason=reason,
        signature=kombu_dumps(data),
        last_error=repr(error)[:10_000],
    )


def resend_due(app: Celery, *, limit: int = BATCH, connection: Any = None) -> int:
    """Publish parked messages that are due; returns how many were sent.

    ``connection``: the broker connection to publish on (the worker's broker upkeep passes one
    with socket timeouts); by default the app's producer pool."""
    using = router.db_for_write(OutboxMessage)
    sent = 0
    for _ in range(limit):
        row = _take_due(using)
        if row is None:
            break
        try:
            _publish(app, row, connection)
        except Exception as exc:  # noqa: BLE001 - the broker is still away: try later
            _postpone(row, exc, using)
            log_event(logging.WARNING, "outbox_resend_failed", id=row.task_id, error=repr(exc))
            break  # the rest would fail the same way
        sent += 1
        log_event(
            logging.INFO, "outbox_resent", task=row.task_name, id=row.task_id, sends=row.sends
        )
    return sent


def waiting() -> int:
    """How many parked messages have not been sent yet (sent ones wait for their task)."""
    using = router.db_for_write(OutboxMessage)
    return OutboxMessage.objects.using(using).filter(sent_at__isnull=True).count()


def take(request: Any, task_name: str) -> bool:
    """Called before the body: False for a copy of a re-sent row that another copy took.

    A redelivery of the copy that took the row (its worker died mid-body) runs, as any
    redelivered message does. If the database cannot answer, the copy runs (logged).
    """
    row_id = (request.headers or {}).get(ROW_HEADER)
    if row_id is None:
        return True
    using = router.db_for_write(OutboxMessage)
    try:
        deleted, _ = OutboxMessage.objects.using(using).filter(pk=row_id).delete()
    except DatabaseError as exc:
        log_event(logging.WARNING, "outbox_take_failed", task=task_name, error=repr(exc))
        return True
    if deleted or (request.delivery_info or {}).get("redelivered"):
        return True
    log_event(logging.INFO, "outbox_copy_skipped", task=task_name, id=request.id, row=row_id)
    return False


def _take_due(using: str) -> OutboxMessage | None:
    """Mark one due row as sent, in its own commit, before it is published."""
    with transaction.atomic(using=using):
        row = (
            OutboxMessage.objects.using(using)
            .select_for_update(skip_locked=True)
            .filter(next_try_at__lte=timezone.now())
            .order_by("next_try_at")
            .first()
        )
        if row is None:
            return None
        now = timezone.now()
        row.sends += 1
        row.sent_at = now
        resend_after = UNTAKEN_RESEND_SECONDS * 2 ** min(row.sends - 1, 7)
        row.next_try_at = max(now, _eta(row) or now) + dt.timedelta(seconds=resend_after)
        row.save(update_fields=["sends", "sent_at", "next_try_at"])
    return row


def _eta(row: OutboxMessage) -> dt.datetime | None:
    eta = (kombu_loads(row.signature).get("options") or {}).get("eta")
    return dt.datetime.fromisoformat(eta) if isinstance(eta, str) else None


def _publish(app: Celery, row: OutboxMessage, connection: Any = None) -> None:
    data: dict[str, Any] = kombu_loads(row.signature)
    sig = signature(data, app=app)
    options = sig.options
    eta = options.get("eta")
    if isinstance(eta, str):
        options["eta"] = dt.datetime.fromisoformat(eta)
    options["headers"] = {**(options.get("headers") or {}), ROW_HEADER: row.pk}
    sig.apply_async(connection=connection)


def _postpone(row: OutboxMessage, exc: BaseException, using: str) -> None:
    """Not sent after all: back to unsent, due again after a backoff."""
    delay = min(60.0, 2.0 ** min(row.attempts, 6))
    OutboxMessage.objects.using(using).filter(pk=row.pk).update(
        attempts=F("attempts") + 1,
        sends=F("sends") - 1,
        sent_at=None,
        last_error=repr(exc)[:10_000],
        next_try_at=timezone.now() + dt.timedelta(seconds=delay),
    )
