"""Tasks for the amortized-completion tests: one acknowledged early, one acknowledged late."""

from __future__ import annotations

import time

from celery_hygiene import idempotent_task
from tests.testapp.models import Attempt, SideEffect


@idempotent_task(entity="key")  # Celery's default: acknowledged when received
def recorded_early(key: str, result_bytes: int = 0) -> str:
    SideEffect.objects.create(entity=key, kind="early")
    return "x" * result_bytes if result_bytes else f"done:{key}"


@idempotent_task(entity="key", acks_late=True, lease_seconds=2)
def recorded_late(key: str, work_seconds: float = 0.0) -> str:
    Attempt.objects.create(task="recorded_late", key=key)
    time.sleep(work_seconds)
    SideEffect.objects.create(entity=key, kind="late")
    return f"done:{key}"
