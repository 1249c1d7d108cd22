"""The plain path: a task without a claim. Its body runs; a failure goes to the policy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore, Reject, Retry

from celery_hygiene.claims import redeliveries
from celery_hygiene.task import failure

if TYPE_CHECKING:
    from celery_hygiene.task.hygiene_task import HygieneTask

    AnyTask = HygieneTask[Any, Any]

# Raised by Celery (or the body) to steer the message; never a failure of the body.
CONTROL_FLOW = (Retry, Ignore, Reject)


def run(task: AnyTask, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    lost = redeliveries.count(task.request, task.name)
    attempt = task.request.retries + 1 + lost
    # Only lost deliveries make a message give up unrun: retries past the cap come from a
    # body's own self.retry(max_retries=...), which Celery honours.
    if lost and attempt > task.hygiene_policy().max_attempts:
        return failure.give_up_lost(task, attempt, ticket=None, key=None)
    try:
        return task._body()(*args, **kwargs)
    except CONTROL_FLOW:
        raise
    except Exception as exc:
        failure.on_body_failure(task, exc, attempt=attempt, ticket=None, key=None)
        raise
