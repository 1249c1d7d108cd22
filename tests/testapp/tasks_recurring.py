"""Recurring work: singletons (periodic tasks), idempotency windows, runs that are not done."""

from __future__ import annotations

import time

from celery_hygiene import NotFinished, RetryPolicy, idempotent_task, singleton_task
from tests.testapp.models import Attempt, SideEffect

QUICK = RetryPolicy(max_attempts=2, min_delay=0.2, max_delay=0.2)


@singleton_task(acks_late=True, retry=QUICK)
def nightly_sweep(seconds: float = 1.5) -> str:
    """A beat task with no arguments: never two at once."""
    started = time.time()
    time.sleep(seconds)
    SideEffect.objects.create(
        entity="sweep", kind="sweep", payload={"start": started, "end": time.time()}
    )
    return "swept"


@singleton_task(key="account", wait=True, acks_late=True, retry=QUICK)
def sync_account(account: str, seconds: float = 1.0) -> str:
    """One sync per account at a time; a second one waits for the first instead of skipping."""
    started = time.time()
    time.sleep(seconds)
    SideEffect.objects.create(
        entity=account, kind="sync", payload={"start": started, "end": time.time()}
    )
    return f"synced:{account}"


@idempotent_task(entity="day", window=2, acks_late=True, retry=QUICK)
def daily_digest(day: str) -> str:
    SideEffect.objects.create(entity=day, kind="digest")
    return f"digest:{day}"


@idempotent_task(entity="batch", acks_late=True, retry=QUICK)
def close_batch(batch: str) -> str:
    """Returns early ("nothing to do yet") the first time: that must not count as done."""
    Attempt.objects.create(task="close_batch", key=batch)
    if Attempt.objects.filter(task="close_batch", key=batch).count() == 1:
        raise NotFinished("batch still open")
    SideEffect.objects.create(entity=batch, kind="closed")
    return f"closed:{batch}"


@idempotent_task(entity="batch", atomic=True, acks_late=True, retry=QUICK)
def close_batch_atomic(batch: str) -> str | None:
    """The atomic twin: its own writes commit even when it ends with NotFinished."""
    Attempt.objects.create(task="close_batch_atomic", key=batch)
    if Attempt.objects.filter(task="close_batch_atomic", key=batch).count() == 1:
        raise NotFinished("batch still open")
    SideEffect.objects.create(entity=batch, kind="closed")
    return f"closed:{batch}"


@singleton_task(key="account", lease_seconds=3, retry=QUICK)
def crash_prone_sync(account: str, since: int, seconds: float = 0.1) -> str:
    """A beat-driven sync whose arguments change every tick (acks early: a crash loses it)."""
    Attempt.objects.create(task="crash_prone_sync", key=f"{account}:{since}")
    time.sleep(seconds)
    SideEffect.objects.create(entity=account, kind="crash_prone_sync", payload={"since": since})
    return f"synced:{account}:{since}"


@singleton_task(key="account", wait=True, lease_seconds=3, retry=QUICK)
def crash_prone_sync_waiting(account: str, since: int, seconds: float = 0.1) -> str:
    """The same with ``wait=True``: a busy tick looks again later instead of skipping."""
    Attempt.objects.create(task="crash_prone_sync_waiting", key=f"{account}:{since}")
    time.sleep(seconds)
    SideEffect.objects.create(
        entity=account, kind="crash_prone_sync_waiting", payload={"since": since}
    )
    return f"synced:{account}:{since}"
