"""Counting lost runs of one message, for tasks that have no claim to count on.

``request.retries`` only counts Celery retries. A message that kills its worker (OOM, segfault)
comes back as a redelivery of the same task id; without counting those it would loop forever.

Only a run that started counts. A redelivered copy records itself here as its body starts, so a
copy that only sat in a killed worker's prefetch (reserved, never started) leaves no trace and
costs the message no attempt. The one delivery nothing records is the first of each retry (the
happy path pays nothing): it is not counted, so a message that kills every worker it starts on
runs at most ``max_attempts + 1`` times before its dead letter, never fewer than it is owed.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, router
from django.db.models import Case, F, Value, When
from django.db.models.functions import Now

from celery_hygiene.events import log_event
from celery_hygiene.models import RedeliveryCount


def count(request: Any, task_name: str) -> int:
    """Earlier runs of this message (at this retry) that started and were lost: 0 for a first
    delivery, else the redelivered copies before this one whose body started."""
    delivery = request.delivery_info or {}
    if not delivery.get("redelivered"):
        return 0
    try:
        return _bump(request.id, task_name, int(request.retries or 0)) - 1
    except DatabaseError as exc:
        # Running the body beats losing the message: the cap is enforced once the database
        # answers again.
        log_event(logging.WARNING, "redelivery_count_failed", task=task_name, error=repr(exc))
        return 0


def _bump(task_id: str, task_name: str, retries: int) -> int:
    """Record that a redelivered copy at ``retries`` starts; how many have, this one included."""
    using = router.db_for_write(RedeliveryCount)
    updated = (
        RedeliveryCount.objects.using(using)
        .filter(task_id=task_id)
        .update(
            # A retry's copies are counted afresh: the runs before it are in request.retries.
            deliveries=Case(When(retries=retries, then=F("deliveries") + 1), default=Value(1)),
            retries=retries,
            updated_at=Now(),
        )
    )
    if not updated:
        RedeliveryCount.objects.using(using).get_or_create(
            task_id=task_id, defaults={"task_name": task_name, "deliveries": 1, "retries": retries}
        )
    return RedeliveryCount.objects.using(using).get(task_id=task_id).deliveries
