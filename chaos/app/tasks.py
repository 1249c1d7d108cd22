"""The two tasks under test: the same body, in plain and in atomic mode.

The body writes one ``SideEffect`` row, then sleeps 50-300 ms (so SIGKILLs land mid-body), then
returns. In plain mode the row commits on its own (autocommit) before the claim is completed;
in atomic mode it commits with the claim and its completion, or not at all.
"""

import datetime as dt
import os
import random
import time

from celery import shared_task
from django.utils import timezone

from celery_hygiene import RetryPolicy, idempotent_task

from .models import SideEffect

LEASE_SECONDS = float(os.environ.get("CHAOS_LEASE_SECONDS", "10"))
BODY_MIN = float(os.environ.get("CHAOS_BODY_MIN_MS", "50")) / 1000
BODY_MAX = float(os.environ.get("CHAOS_BODY_MAX_MS", "300")) / 1000
# Short waits so that retries after a PostgreSQL restart or a broker cut happen within the run.
POLICY = RetryPolicy(max_attempts=8, min_delay=0.5, max_delay=5.0)

OPTIONS = {
    "entity": "key",
    "acks_late": True,
    "reject_on_worker_lost": True,
    "retry": POLICY,
    "lease_seconds": LEASE_SECONDS,
    "bind": True,
}


def _body(task, key: str, mode: str) -> str:
    pause = random.uniform(BODY_MIN, BODY_MAX)
    now = timezone.now()
    SideEffect.objects.create(
        key=key,
        mode=mode,
        task_id=task.request.id or "",
        worker_pid=os.getpid(),
        worker_pgid=os.getpgid(0),
        worker=task.request.hostname or "",
        created_at=now,
        returns_at=now + dt.timedelta(seconds=pause),
    )
    time.sleep(pause)
    return key


@idempotent_task(operation="chaos-plain", name="chaos.plain_effect", **OPTIONS)
def plain_effect(self, key: str) -> str:
    return _body(self, key, "plain")


@idempotent_task(operation="chaos-atomic", atomic=True, name="chaos.atomic_effect", **OPTIONS)
def atomic_effect(self, key: str) -> str:
    return _body(self, key, "atomic")


@shared_task(name="chaos.control_effect", acks_late=True, reject_on_worker_lost=True, bind=True)
def control_effect(self, key: str) -> str:
    """The control (``run.py --control``): the same body with no claim and no retry policy."""
    return _body(self, key, "control")
