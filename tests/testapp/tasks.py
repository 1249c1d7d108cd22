"""Tasks the foundation tests send through a real broker to real workers.

Side effects are written to tests.testapp models, so tests assert "exactly once" from what the
body did, not from the library's own bookkeeping.
"""

from __future__ import annotations

import time

from django.dispatch import receiver

from celery_hygiene import RetryPolicy, idempotent_task
from celery_hygiene.signals import task_duplicate
from tests.testapp.models import Attempt, SideEffect

FAST_RETRY = RetryPolicy(max_attempts=3, min_delay=0.2, max_delay=0.5)


@idempotent_task(entity="order_id", operation="charge", acks_late=True, retry=FAST_RETRY)
def charge_order(order_id: int, amount_cents: int, work_seconds: float = 0.0) -> dict:
    Attempt.objects.create(task="charge_order", key=str(order_id))
    if work_seconds:
        time.sleep(work_seconds)
    SideEffect.objects.create(entity=str(order_id), kind="charge", payload={"amount": amount_cents})
    return {"order_id": order_id, "charged": amount_cents}


@idempotent_task(
    entity="key", acks_late=True, reject_on_worker_lost=True, lease_seconds=8, retry=FAST_RETRY
)
def crashable(key: str, work_seconds: float) -> str:
    """Records each start, works for a while (the test kills the worker here), then the effect."""
    Attempt.objects.create(task="crashable", key=key)
    time.sleep(work_seconds if Attempt.objects.filter(key=key).count() == 1 else 0.1)
    SideEffect.objects.create(entity=key, kind="crashable")
    return f"done:{key}"


@idempotent_task(entity="key", lease_seconds=3, retry=FAST_RETRY)
def early_ack(key: str, work_seconds: float) -> str:
    """acks_late off: a killed worker loses the message; a later duplicate still does the work."""
    Attempt.objects.create(task="early_ack", key=key)
    time.sleep(work_seconds if Attempt.objects.filter(key=key).count() == 1 else 0.1)
    SideEffect.objects.create(entity=key, kind="early_ack")
    return f"done:{key}"


@idempotent_task(
    entity=lambda invoice_id, **_: f"invoice:{invoice_id}",
    atomic=True,
    acks_late=True,
    retry=FAST_RETRY,
)
def issue_invoice(invoice_id: int, fail_first: int = 0) -> str:
    """Atomic: its SideEffect commits with the claim, or not at all."""
    SideEffect.objects.create(entity=f"invoice:{invoice_id}", kind="invoice")
    Attempt.objects.using("attempts").create(task="issue_invoice", key=str(invoice_id))
    if Attempt.objects.using("attempts").filter(key=str(invoice_id)).count() <= fail_first:
        raise ConnectionError("payment gateway timed out")
    return f"invoice:{invoice_id}"


@idempotent_task(entity="entity", acks_late=True)
def race_effect(entity: str, seq: int) -> str:
    time.sleep(0.02)
    SideEffect.objects.create(entity=entity, kind="race", payload={"seq": seq})
    return entity


@idempotent_task(entity="account", on_mismatch="raise", retry=FAST_RETRY)
def strict_transfer(account: str, amount: int) -> int:
    SideEffect.objects.create(entity=account, kind="transfer", payload={"amount": amount})
    return amount


@idempotent_task(entity=lambda key, **_: key.strip(), retry=FAST_RETRY)
def keyed_by_callable(key: str) -> str:
    SideEffect.objects.create(entity=key or "<empty>", kind="callable")
    return key


@idempotent_task(entity=lambda key, **_: 1 / 0, retry=FAST_RETRY)
def broken_entity(key: str) -> str:
    SideEffect.objects.create(entity=key, kind="broken")
    return key


@idempotent_task(entity="key", retry=FAST_RETRY)
def unstorable_result(key: str) -> object:
    SideEffect.objects.create(entity=key, kind="unstorable")
    return object()


@idempotent_task(entity="key", bind=True, name="tests.bound_task", acks_late=True)
def bound_task(self, key: str) -> str:  # noqa: ANN001
    SideEffect.objects.create(entity=key, kind="bound", payload={"task_id": self.request.id})
    return self.request.id


@receiver(task_duplicate)
def _record_duplicate(sender, task_id, entity, operation, status, **kwargs):  # noqa: ANN001
    SideEffect.objects.create(entity=entity, kind="signal:duplicate", payload={"task_id": task_id})
