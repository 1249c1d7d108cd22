"""Counting broker redeliveries of one message, for tasks that have no claim to count on.

``request.retries`` only counts Celery retries. A message that kills its worker (OOM, segfault)
comes back as a redelivery of the same task id; without counting those it would loop forever.
Only redelivered messages touch the database, so the happy path pays nothing.
"""

from __future__ import annotations

from typing import Any

from django.db import router
from django.db.models import F
from django.db.models.functions import Now

from .models import RedeliveryCount


def count(request: Any, task_name: str) -> int:
    """How many times this task id has been redelivered so far (0 for a first delivery)."""
    delivery = request.delivery_info or {}
    if not delivery.get("redelivered"):
        return 0
    using = router.db_for_write(RedeliveryCount)
    updated = (
        RedeliveryCount.objects.using(using)
        .filter(task_id=request.id)
        .update(deliveries=F("deliveries") + 1, updated_at=Now())
    )
    if not updated:
        RedeliveryCount.objects.using(using).get_or_create(
            task_id=request.id, defaults={"task_name": task_name, "deliveries": 1}
        )
    return RedeliveryCount.objects.using(using).get(task_id=request.id).deliveries
