"""Messages that must not be lost when the broker refuses a publish.

A retry, a deferred duplicate or a claim that waits out a database outage is a *new* message;
the delivery that asked for it is acknowledged right after. If that publish fails and nothing
else keeps the work, the work is gone. So the message is parked here (in the same PostgreSQL
that holds the claims) and re-sent by every worker's main process (``OUTBOX_SWEEP_SECONDS``) or
by ``manage.py taskhygiene resend``. Sweeps on several workers never send one message twice:
rows are taken with ``FOR UPDATE SKIP LOCKED`` and deleted in the transaction that sent them.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import Celery, Signature, signature
from django.db import router, transaction
from django.db.models import F
from django.utils import timezone
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from .events import log_event
from .models import OutboxMessage

BATCH = 100


def park(sig: Signature, *, reason: str, error: BaseException) -> OutboxMessage:
    """Store a signature that could not be published; its countdown becomes an absolute ETA."""
    data = dict(sig)
    options = dict(data.get("options") or {})
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
    with transaction.atomic(using=using):
        rows = list(
            OutboxMessage.objects.using(using)
            .select_for_update(skip_locked=True)
            .filter(next_try_at__lte=timezone.now())
            .order_by("next_try_at")[:limit]
        )
        for row in rows:
            try:
                _publish(app, row, connection)
            except Exception as exc:  # noqa: BLE001 - the broker is still away: try later
                _postpone(row, exc, using)
                log_event(logging.WARNING, "outbox_resend_failed", id=row.task_id, error=repr(exc))
                break  # the rest would fail the same way; keep their locks short
            OutboxMessage.objects.using(using).filter(pk=row.pk).delete()
            sent += 1
            log_event(logging.INFO, "outbox_resent", task=row.task_name, id=row.task_id)
    return sent


def _publish(app: Celery, row: OutboxMessage, connection: Any = None) -> None:
    data: dict[str, Any] = kombu_loads(row.signature)
    sig = signature(data, app=app)
    eta = (sig.options or {}).get("eta")
    if isinstance(eta, str):
        sig.options["eta"] = dt.datetime.fromisoformat(eta)
    sig.apply_async(connection=connection)


def _postpone(row: OutboxMessage, exc: BaseException, using: str) -> None:
    delay = min(60.0, 2.0 ** min(row.attempts, 6))
    OutboxMessage.objects.using(using).filter(pk=row.pk).update(
        attempts=F("attempts") + 1,
        last_error=repr(exc)[:10_000],
        next_try_at=timezone.now() + dt.timedelta(seconds=delay),
    )
