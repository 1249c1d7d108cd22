"""Runs the pool lost, reported in the worker's main process (``worker/failure_reports.py``,
``task/handover.py``'s request): dead-letter them, or free the claim for their redelivery.

There is no body here and no ``self.request`` of the run (unless Celery pushed one): what the
pool process would have known is rebuilt from the message's id, arguments and routing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import TimeLimitExceeded

from celery_hygiene import signals
from celery_hygiene.claims import state as claims
from celery_hygiene.claims.dbretry import with_db_retries
from celery_hygiene.claims.state import ClaimKey
from celery_hygiene.events import log_event
from celery_hygiene.failures import deadletters
from celery_hygiene.models import DeadLetterReason, TaskClaim
from celery_hygiene.task import claiming, failure, node

if TYPE_CHECKING:
    from celery_hygiene.task.hygiene_task import HygieneTask

    AnyTask = HygieneTask[Any, Any]


def claim_key_or_none(task: AnyTask, args: Any, kwargs: Any) -> ClaimKey | None:
    """The claim key of a message, or None (no claim, or arguments that do not bind)."""
    spec = task.hygiene_idempotency
    if spec is None:
        return None
    try:
        return task._claim_key(spec, tuple(args), dict(kwargs))
    except Exception:
        return None


def dead_letter_from_parent(
    task: AnyTask, task_id: str, exc: BaseException, args: Any, kwargs: Any
) -> None:
    """Dead-letter a run that the pool lost (hard time limit, lost worker without requeue).

    Runs in the worker's main process: ``task.request`` carries the message's context only
    when Celery pushed it (worker lost); after a hard timeout we rebuild what we can. The
    claim is closed in the dead letter's transaction, fenced on this task id: if the work
    was finished or taken over meanwhile, nothing is written.
    """
    request = task.request if task.request.id == task_id else None
    reason = (
        DeadLetterReason.TIMEOUT
        if isinstance(exc, TimeLimitExceeded)
        else DeadLetterReason.WORKER_LOST
    )
    if isinstance(exc, TimeLimitExceeded) and exc.args and isinstance(exc.args[0], int | float):
        # Same type (filters still match), words an operator can read at 3 a.m.
        exc = TimeLimitExceeded(
            f"hard time limit of {exc.args[0]:g} s exceeded: the pool killed the process "
            f"running {task.name}[{task_id}]"
        )
    key = claim_key_or_none(task, args or (), kwargs or {})
    failed = failure.failed_task(
        task,
        exc,
        reason=reason,
        attempts=(request.retries + 1) if request is not None else 1,
        key=key,
    )
    failed.task_id = task_id
    failed.args = list(args or ())
    failed.kwargs = dict(kwargs or {})
    if request is None:
        failed.queue = failed.routing_key = _default_queue(task)
    worker = node.hostname()  # this main process's node name, as its pool writes it
    close = _owner_closer(key, task_id, repr(exc), worker) if key is not None else None
    try:
        dead_letter = deadletters.store(failed, also=close)
    except deadletters.ClaimMovedOn as moved:
        log_event(
            logging.INFO,
            "task_lost_after_claim_moved_on",
            task=task.name,
            id=task_id,
            entity=key.entity if key else None,
            detail=str(moved),
            exc=type(exc).__name__,
        )
        return
    except Exception as error:
        deadletters.log_unstorable(failed, error)
        return
    log_event(
        logging.ERROR, "task_dead_lettered", **failed.log_fields(), dead_letter=dead_letter.pk
    )
    claiming.send_safely(
        signals.task_dead_lettered,
        sender=task,
        task_id=task_id,
        dead_letter=dead_letter,
        exception=exc,
    )


def release_lost_lease(task: AnyTask, task_id: str, args: Any, kwargs: Any, worker: str) -> None:
    """The process running this body died and Celery requeued the message: free the claim
    now, so the redelivery takes it over at once instead of after the lease."""
    key = claim_key_or_none(task, args or (), kwargs or {})
    if key is None:
        return
    with_db_retries(
        lambda: claims.expire_lease(
            key.entity, key.operation, owner_task_id=task_id, worker=worker
        ),
        event="lease_release_retry",
    )


def _owner_closer(key: ClaimKey, task_id: str, error: str, worker: str | None) -> Any:
    """For the main process: mark this task id's claim dead, or refuse if it moved on."""

    def close() -> dict[str, Any] | None:
        attempts = claims.mark_dead_for_owner(
            key.entity, key.operation, owner_task_id=task_id, error=error, worker=worker
        )
        if attempts:
            return {"attempts": attempts}
        current = (
            TaskClaim.objects.using(claims.write_alias())
            .filter(entity=key.entity, operation=key.operation)
            .values_list("status", "owner_task_id")
            .first()
        )
        if current is not None:  # finished, or owned by another delivery now
            raise deadletters.ClaimMovedOn(f"claim is {current[0]}, owned by {current[1]}")
        return None  # no row at all (an atomic claim rolled back): the dead letter stands alone

    return close


def _default_queue(task: Task[Any, Any]) -> str:
    """Where this task is routed by configuration (the message itself is gone)."""
    try:
        route = task.app.amqp.router.route({}, task.name, (), {})
        queue = route.get("queue")
        return getattr(queue, "name", None) or str(queue or "")
    except Exception:
        return task.app.conf.task_default_queue or ""
