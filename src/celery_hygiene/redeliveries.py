"""Counting broker redeliveries of one message, for tasks that have no claim to count on.

``request.retries`` only counts Celery retries. A message that kills its worker (OOM, segfault)
comes back as a redelivery of the same task id; without counting those it would loop forever.
Only redelivered messages touch the database, so the happy path pays nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, router
from django.db.models import F
from django.db.models.functions import Now

from .events import log_event
from .models import RedeliveryCount


def count(request: Any, task_name: str) -> int:
    """How many times this task id has been redelivered so far (0 for a first delivery)."""
    delivery = request.delivery_info or {}
    if not delivery.get("redelivered"):
        return 0
    try:
        return _bump(request.id, task_name)
    except DatabaseError as exc:
        # Running the body beats losing the message: the cap is enforced once the database
        # answers again.
        log_event(logging.WARNING, "redelivery_count_failed", task=task_name, error=repr(exc))
        return 0


def _bump(task_id: str, task_name: str) -> int:
    using = router.db_for_write(RedeliveryCount)
    updated = (
        RedeliveryCount.objects.using(using)
        .filter(task_id=task_id)
        .update(deliveries=F("deliveries") + 1, updated_at=Now())
    )
    if not updated:
        RedeliveryCount.objects.using(using).get_or_create(
            task_id=task_id, defaults={"task_name": task_name, "deliveries": 1}
        )
    return RedeliveryCount.objects.using(using).get(task_id=task_id).deliveries
