"""Tasks for the amortized-completion tests: one acknowledged early, one acknowledged late."""

from __future__ import annotations

import os
import time
from typing import Any

from celery_hygiene import HygieneTask, idempotent_task
from tests.testapp.models import Attempt, SideEffect


@idempotent_task(entity="key")  # Celery's default: acknowledged when received
def recorded_early(key: str, result_bytes: int = 0) -> str:
    SideEffect.objects.create(entity=key, kind="early")
    return "x" * result_bytes if result_bytes else f"done:{key}"


@idempotent_task(entity="key", acks_late=True, lease_seconds=3)
def recorded_late(key: str, work_seconds: float = 0.0) -> str:
    Attempt.objects.create(task="recorded_late", key=key)
    time.sleep(work_seconds)
    SideEffect.objects.create(entity=key, kind="late")
    return f"done:{key}"


class _DiesAfterHandingOver(HygieneTask):
    """Kills its own pool process right after the completion was handed over, before Celery
    learns that the body returned (an OOM kill or a hard time limit landing there); once per
    flag file."""

    def _complete(self, ticket: Any, value: Any) -> None:
        super()._complete(ticket, value)
        flag = os.environ.get("HYGIENE_DIE_AFTER_BODY_FLAG", "")
        if flag and os.path.exists(flag):
            os.unlink(flag)
            os._exit(1)


@idempotent_task(
    entity="key", base=_DiesAfterHandingOver, acks_late=True, reject_on_worker_lost=True
)
def dies_after_body_requeued(key: str) -> str:
    Attempt.objects.create(task="dies_after_body", key=key)
    return f"done:{key}"


@idempotent_task(entity="key", base=_DiesAfterHandingOver, acks_late=True)
def dies_after_body_dead_lettered(key: str) -> str:
    Attempt.objects.create(task="dies_after_body", key=key)
    return f"done:{key}"
