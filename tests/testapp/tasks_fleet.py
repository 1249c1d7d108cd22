"""Tasks that get HygieneTask through ``base=`` without choosing a hygiene policy (issue 23)."""

from __future__ import annotations

import os
import signal
from typing import Any

from celery import shared_task
from celery.exceptions import MaxRetriesExceededError

from celery_hygiene import HygieneTask, hygienic_task
from tests.testapp.models import Attempt, SideEffect

ERRORS: dict[str, type[Exception]] = {"io": OSError, "value": ValueError}


def _attempt(task: str, key: str) -> None:
    Attempt.objects.create(task=task, key=key)


@shared_task(base=HygieneTask, name="fleet.plain_fails")
def plain_fails(key: str) -> None:
    _attempt("fleet.plain_fails", key)
    raise ValueError(f"plain failure {key}")


@shared_task(
    base=HygieneTask,
    name="fleet.autoretry_io",
    autoretry_for=(IOError,),
    max_retries=1,
    default_retry_delay=0.2,
)
def autoretry_io(key: str, error: str) -> None:
    _attempt("fleet.autoretry_io", key)
    raise ERRORS[error](f"{error} failure {key}")


@shared_task(base=HygieneTask, name="fleet.self_retry", bind=True, max_retries=2)
def self_retry(self: Any, key: str) -> None:
    _attempt("fleet.self_retry", key)
    raise self.retry(exc=ConnectionError(f"partner down {key}"), countdown=0.1)


@shared_task(base=HygieneTask, name="fleet.self_retry_forever", bind=True, max_retries=None)
def self_retry_forever(self: Any, key: str) -> None:
    """Celery would retry this forever; hygiene holds it to the default policy's cap."""
    _attempt("fleet.self_retry_forever", key)
    try:
        raise self.retry(countdown=0.1)
    except MaxRetriesExceededError:
        SideEffect.objects.create(entity=key, kind="forever-capped")
        raise


# For `taskhygiene check --tasks` (never run): a task not hygienic yet, and a decorated one whose
# policy retries where plain Celery did not.
@shared_task(
    name="fleet.not_yet_hygienic",
    autoretry_for=(ConnectionError,),
    retry_backoff=True,
    retry_jitter=False,
    max_retries=None,
    soft_time_limit=20,
    time_limit=30,
)
def not_yet_hygienic() -> None: ...


@hygienic_task(name="fleet.decorated_with_a_delay", default_retry_delay=60, max_retries=5)
def decorated_with_a_delay() -> None: ...


@shared_task(
    base=HygieneTask,
    name="fleet.kills_its_worker",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=1,
)
def kills_its_worker(key: str) -> None:
    """Plain Celery would redeliver this forever; hygiene stops after max_retries + 1 runs."""
    _attempt("fleet.kills_its_worker", key)
    os.kill(os.getpid(), signal.SIGKILL)  # as an OOM kill or a segfault would
