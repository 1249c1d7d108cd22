"""Sending a follow-up message (retry, deferred duplicate, claim retry) without losing the work.

The delivery that asks for the follow-up is acknowledged as soon as the task returns, so the
follow-up must exist somewhere before that: on the broker, else in the outbox table, else the
current delivery goes back to the broker (``Reject(requeue=True)``, only possible while it is not
acknowledged yet, i.e. with ``acks_late``). Only when all three fail is the message logged in
full at ERROR as the last copy.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Signature
from celery.exceptions import Reject

from celery_hygiene.claims.dbretry import with_db_retries
from celery_hygiene.events import log_event
from celery_hygiene.failures import outbox
from celery_hygiene.failures.redaction import redact


def send_or_keep(sig: Signature, *, task: Any, reason: str) -> None:
    """Publish ``sig``; if the broker refuses, park it; if that fails too, keep the delivery.

    Returns normally when the follow-up is safe (sent or parked); raises ``Reject(requeue=True)``
    when the current delivery must stay with the broker instead.
    """
    try:
        sig.apply_async()
        return
    except Exception as publish_error:  # noqa: BLE001 - any transport error
        error: Exception = publish_error
    try:
        with_db_retries(
            lambda: outbox.park(sig, reason=reason, error=error), event="outbox_park_retry"
        )
    except Exception as park_error:  # noqa: BLE001
        _keep_delivery(sig, task=task, reason=reason, error=error, park_error=park_error)
        return
    log_event(
        logging.WARNING,
        "publish_failed_parked",
        task=task.name,
        id=task.request.id,
        reason=reason,
        error=repr(error),
    )


def _keep_delivery(
    sig: Signature, *, task: Any, reason: str, error: Exception, park_error: BaseException
) -> None:
    fields = {
        "task": task.name,
        "id": task.request.id,
        "reason": reason,
        "error": repr(error),
        "park_error": repr(park_error),
    }
    # With acks_late the delivery is acknowledged only after the task returns: it can go back.
    if task.acks_late:
        log_event(logging.ERROR, "publish_failed_requeued", **fields)
        raise Reject(error, requeue=True)
    log_event(
        logging.ERROR,
        "publish_failed_lost",
        **fields,
        # Masked like the dead-letter views (REDACT_KEYS): logs travel further than the database.
        payload=json.dumps(redact(dict(sig)), default=repr),
    )
