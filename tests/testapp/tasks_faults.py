"""Tasks for the claims-under-faults tests: long bodies, poison messages, publish failures."""

from __future__ import annotations

import os
import time

from celery_hygiene import RetryPolicy, idempotent_task
from tests.testapp.models import Attempt, SideEffect

QUICK = RetryPolicy(max_attempts=3, min_delay=0.5, max_delay=0.5)


@idempotent_task(entity="key", acks_late=True, lease_seconds=2, retry=QUICK)
def outlives_its_lease(key: str, work_seconds: float) -> str:
    """Runs three times longer than its lease: only the heartbeat keeps the claim its own."""
    Attempt.objects.create(task="outlives_its_lease", key=key)
    time.sleep(work_seconds)
    SideEffect.objects.create(entity=key, kind="long")
    return f"done:{key}"


@idempotent_task(
    entity="key",
    atomic=True,
    acks_late=True,
    reject_on_worker_lost=True,
    retry=RetryPolicy(max_attempts=3, min_delay=0.2, max_delay=0.2),
)
def atomic_poison(key: str) -> None:
    """Kills its pool process every time, like a segfault or the OOM killer would."""
    Attempt.objects.using("attempts").create(task="atomic_poison", key=key)
    os._exit(1)


@idempotent_task(entity="key", acks_late=True, retry=QUICK)
def fails_once_then_succeeds(key: str) -> str:
    Attempt.objects.create(task="fails_once_then_succeeds", key=key)
    if Attempt.objects.filter(task="fails_once_then_succeeds", key=key).count() == 1:
        raise ConnectionError("first try fails")
    SideEffect.objects.create(entity=key, kind="second-try")
    return f"done:{key}"


@idempotent_task(entity="key", acks_late=True, bind=True, retry=QUICK)
def hands_over(self, key: str) -> None:  # noqa: ANN001 - Celery's bound task
    """Replaces itself with another task: the claim must record that the body ran."""
    Attempt.objects.create(task="hands_over", key=key)
    queue = (self.request.delivery_info or {}).get("routing_key")  # the test's own queue
    raise self.replace(record_handover.si(key).set(queue=queue))


@idempotent_task(entity="key", acks_late=True, retry=QUICK)
def record_handover(key: str) -> str:
    SideEffect.objects.create(entity=key, kind="handover")
    return f"handed:{key}"
