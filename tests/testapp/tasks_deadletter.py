"""Tasks for the dead-letter operations tests (CLI, admin, replay through a real worker)."""

from __future__ import annotations

from celery import shared_task

from celery_hygiene import RetryPolicy, hygienic_task, idempotent_task
from tests.testapp.models import Attempt, SideEffect

# Two quick attempts, then a dead letter: keeps end-to-end replay tests short.
TWO_TRIES = RetryPolicy(max_attempts=2, min_delay=0.2, max_delay=0.3)


@shared_task(name="tests.deadletter.record")
def record(key: str, **extra: object) -> str:
    """A plain registered task: replays of hand-made dead letters point at it."""
    SideEffect.objects.create(entity=key, kind="record", payload=extra)
    return key


@hygienic_task(name="tests.deadletter.always_fails", retry=TWO_TRIES, acks_late=True)
def always_fails(key: str, password: str = "") -> None:
    Attempt.objects.create(task="always_fails", key=key)
    raise ConnectionError(f"gateway down for {key}")


@idempotent_task(
    name="tests.deadletter.charge_until_fixed", entity="order_id", retry=TWO_TRIES, acks_late=True
)
def charge_until_fixed(order_id: str) -> str:
    """Fails while no 'fixed' SideEffect exists for the order: the operator fixes, then replays."""
    Attempt.objects.create(task="charge_until_fixed", key=order_id)
    if not SideEffect.objects.filter(entity=order_id, kind="fixed").exists():
        raise ConnectionError(f"card processor down for {order_id}")
    SideEffect.objects.create(entity=order_id, kind="charged")
    return order_id
