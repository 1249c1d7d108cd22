"""Tasks with Celery's own retry options, as a codebase moving from ``@app.task`` has them."""

from __future__ import annotations

from celery.exceptions import MaxRetriesExceededError

from celery_hygiene import hygienic_task, idempotent_task
from tests.testapp.models import Attempt, SideEffect


def _attempt(task: str, key: str) -> int:
    Attempt.objects.create(task=task, key=key)
    return Attempt.objects.filter(task=task, key=key).count()


# Celery autoretry, moved as is: exponential backoff capped at 1 s, full jitter, 2 retries.
@hygienic_task(
    autoretry_for=(ConnectionError,),
    dont_autoretry_for=(ConnectionRefusedError,),
    retry_backoff=True,
    retry_backoff_max=1,
    max_retries=2,
    acks_late=True,
)
def celery_autoretry(key: str, mode: str = "always") -> str:
    attempt = _attempt("celery_autoretry", key)
    if mode == "refused":
        raise ConnectionRefusedError("partner refused")
    if mode == "always" or (mode == "flaky" and attempt < 3):
        raise ConnectionError(f"partner unreachable for {key}")
    return f"done:{key}"


# A body that retries itself, the other Celery idiom: counts against the same cap.
@hygienic_task(bind=True, max_retries=2, default_retry_delay=0.2, acks_late=True)
def self_retrying(self, key: str, with_exc: bool = True) -> None:
    _attempt("self_retrying", key)
    try:
        if with_exc:
            raise self.retry(exc=ConnectionError(f"partner unreachable for {key}"))
        raise self.retry()
    except MaxRetriesExceededError:
        # Celery raises it from self.retry() once the cap is reached; a body that catches it
        # decides what happens. This one records that it saw it and lets it go on.
        SideEffect.objects.create(entity=key, kind="body-saw-max-retries")
        raise


@idempotent_task(
    entity="order_id",
    operation="adopt-charge",
    bind=True,
    max_retries=1,
    default_retry_delay=0.2,
    acks_late=True,
    reject_on_worker_lost=True,
)
def idempotent_self_retrying(self, order_id: int) -> None:
    _attempt("idempotent_self_retrying", str(order_id))
    raise self.retry(exc=TimeoutError(f"gateway timed out for {order_id}"))
