"""Tasks for delay_on_commit's tests (tests/test_enqueue.py): each records every body run
(Attempt) and its one effect (SideEffect), so "ran once" is read from the test's own tables."""

from __future__ import annotations

import time

from celery_hygiene import hygienic_task, idempotent_task
from tests.testapp.models import Attempt, SideEffect


@idempotent_task(entity="key", acks_late=True)
def charge(key: str) -> str:
    Attempt.objects.create(task="charge", key=key)
    SideEffect.objects.create(entity=key, kind="charge")
    return f"charged:{key}"


@hygienic_task(acks_late=True)
def notify(key: str) -> None:
    Attempt.objects.create(task="notify", key=key)
    SideEffect.objects.create(entity=key, kind="notify")


@idempotent_task(entity="key", acks_late=False, lease_seconds=3)
def slow_early_ack(key: str, seconds: float) -> None:
    """Acknowledged on receipt (no acks_late): a killed worker takes the message with it."""
    Attempt.objects.create(task="slow_early_ack", key=key)
    time.sleep(seconds)
    SideEffect.objects.create(entity=key, kind="slow")


@hygienic_task(acks_late=False)
def slow_plain_early_ack(key: str, seconds: float) -> None:
    Attempt.objects.create(task="slow_plain_early_ack", key=key)
    time.sleep(seconds)
    SideEffect.objects.create(entity=key, kind="slow-plain")
