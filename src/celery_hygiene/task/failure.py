"""A body failed: schedule its retry (the policy says so) or keep it as a dead letter.

Both close the message's claim in the same step: a retry releases it for that retry alone,
a dead letter marks it dead in the dead letter's transaction (fenced: if the work was finished
or taken over meanwhile, nothing is written). The retry policy is ``failures/retry.py``, the
dead letters ``failures/deadletters.py``; this is the task's side of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from django.utils import timezone

from celery_hygiene import conf, signals
from celery_hygiene.claims import state as claims
from celery_hygiene.claims.state import ClaimKey, Ticket
from celery_hygiene.events import log_event
from celery_hygiene.exceptions import ResultNotStorable
from celery_hygiene.failures import deadletters
from celery_hygiene.failures.retry import Decision
from celery_hygiene.models import DeadLetterReason
from celery_hygiene.task import claiming, publishing
from celery_hygiene.task.headers import (
    FIRST_FAILED_HEADER,
    RETRY_TOKEN_HEADER,
    attempt_headers,
    elapsed,
    from_epoch,
    header,
)

if TYPE_CHECKING:
    from celery_hygiene.task.hygiene_task import HygieneTask

    AnyTask = HygieneTask[Any, Any]

# Set on the exception Celery raises from a body's own self.retry() once max_retries is reached.
CAP_REACHED = "_celery_hygiene_retry_cap_reached"
_TIME_LIMITS = (SoftTimeLimitExceeded, TimeLimitExceeded)


def on_body_failure(
    task: AnyTask, exc: Exception, *, attempt: int, ticket: Ticket | None, key: ClaimKey | None
) -> None:
    """Schedule a retry (raises Retry) or store a dead letter (returns; caller re-raises)."""
    if isinstance(exc, ResultNotStorable):
        spec = task.hygiene_idempotency
        if not (spec and spec.atomic):
            return  # the body ran and the claim says so; nothing to retry or replay
        decision = Decision(retry=False, reason=DeadLetterReason.GAVE_UP)
    elif getattr(exc, CAP_REACHED, False):
        decision = Decision(retry=False, reason=DeadLetterReason.EXHAUSTED)
    else:
        decision = task.hygiene_policy().decide(
            attempt=attempt, exc=exc, elapsed=elapsed(task.request)
        )
    if decision.retry:
        _schedule_retry(task, exc, decision, attempt, ticket)
    reason = DeadLetterReason.TIMEOUT if isinstance(exc, _TIME_LIMITS) else decision.reason
    dead_letter(task, exc, reason=reason, attempts=attempt, ticket=ticket, key=key)


def _schedule_retry(
    task: AnyTask, exc: Exception, decision: Decision, attempt: int, ticket: Ticket | None
) -> None:
    countdown = decision.countdown
    warn_visibility_timeout(task, countdown)
    request = task.request
    headers = attempt_headers(request)
    if ticket is not None:
        claiming.release(ticket, retry_in=countdown, error=repr(exc))
        headers[RETRY_TOKEN_HEADER] = ticket.attempts
    log_event(
        logging.WARNING,
        "task_retry_scheduled",
        task=task.name,
        id=request.id,
        attempt=attempt,
        max_attempts=task.hygiene_policy().max_attempts,
        countdown=round(countdown, 3),
        exc=type(exc).__name__,
    )
    claiming.send_safely(
        signals.task_retry_scheduled,
        sender=task,
        task_id=request.id,
        attempt=attempt,
        countdown=countdown,
        exception=exc,
    )
    # Published here rather than by Task.retry(), which turns a failed publish into
    # Reject(requeue=False): the work would be gone.
    sig = task.signature_from_request(
        request,
        countdown=countdown,
        retries=request.retries + 1,
        headers=headers,
        expires=None,
    )
    publishing.send_or_keep(sig, task=task, reason="retry")
    # celery-types types `when` as numbers.Real, which mypy never matches with float.
    raise Retry(exc=exc, when=countdown, sig=sig)  # type: ignore[arg-type]


def give_up_lost(
    task: AnyTask, attempts: int, *, ticket: Ticket | None, key: ClaimKey | None
) -> None:
    """The message came back more times than the policy allows: it keeps killing workers."""
    from billiard.exceptions import WorkerLostError

    max_attempts = task.hygiene_policy().max_attempts
    exc = WorkerLostError(
        f"{task.name}[{task.request.id}] was not run again on delivery {attempts}: its "
        f"max_attempts={max_attempts} runs are used up and the worker running it was lost "
        "each time (killed, out of memory, crashed)."
    )
    dead_letter(
        task, exc, reason=DeadLetterReason.WORKER_LOST, attempts=attempts, ticket=ticket, key=key
    )
    return None


def dead_letter(
    task: AnyTask,
    exc: BaseException,
    *,
    reason: str,
    attempts: int,
    ticket: Ticket | None,
    key: ClaimKey | None,
) -> None:
    """Store the dead letter; never raises into Celery, except Reject if nothing was stored."""
    failed = failed_task(task, exc, reason=reason, attempts=attempts, key=key)
    if ticket is None and key is not None:
        ticket = claiming.ticket_for(task, key, attempts)  # atomic mode rolled ours back
    close_claim = _closer(ticket, repr(exc)) if ticket else None
    try:
        stored = deadletters.store(failed, also=close_claim)
    except deadletters.ClaimMovedOn:
        # Another delivery finished the work (or owns it now): this failure is not the
        # task's fate, and a dead letter would invite a replay of done work.
        log_event(
            logging.INFO,
            "task_failure_after_claim_moved_on",
            task=task.name,
            id=task.request.id,
            entity=failed.entity,
            exc=type(exc).__name__,
        )
        return
    except Exception as error:
        deadletters.log_unstorable(failed, error)
        raise _keep_undead_letter(error) from error
    log_event(logging.ERROR, "task_dead_lettered", **failed.log_fields(), dead_letter=stored.pk)
    claiming.send_safely(
        signals.task_dead_lettered,
        sender=task,
        task_id=task.request.id,
        dead_letter=stored,
        exception=exc,
    )


def _keep_undead_letter(error: Exception) -> Reject:
    """The database cannot take the dead letter: leave the message with the broker.

    ``requeue`` (default) works on every broker but redelivers at once; ``reject`` hands it
    to a RabbitMQ dead-letter exchange (without one, RabbitMQ drops it; Redis has none).
    Either way only an unacknowledged delivery (``acks_late``) can be kept: without it the
    log line written before is the only copy.
    """
    requeue = str(conf.get("DEADLETTER_FALLBACK")) != "reject"
    if requeue:
        time.sleep(min(5.0, float(conf.get("DB_RETRY_MAX_WAIT"))))  # no hot redelivery loop
    return Reject(error, requeue=requeue)


def failed_task(
    task: AnyTask, exc: BaseException, *, reason: str, attempts: int, key: ClaimKey | None
) -> deadletters.FailedTask:
    """What a dead letter keeps of this message (its request, its delivery, its claim key)."""
    request = task.request
    delivery = request.delivery_info or {}
    now = timezone.now()
    first = header(request, FIRST_FAILED_HEADER)
    return deadletters.FailedTask(
        task_name=task.name,
        task_id=request.id or "",  # no request in the parent: dead_letter_from_parent sets it
        args=request.args if request.args is not None else [],
        kwargs=request.kwargs if request.kwargs is not None else {},
        exception=exc,
        reason=reason,
        attempts=attempts,
        first_failed_at=from_epoch(first) if first else now,
        last_failed_at=now,
        queue=_queue_name(delivery),
        exchange=delivery.get("exchange") or "",
        routing_key=delivery.get("routing_key") or "",
        priority=delivery.get("priority"),
        headers=_replay_headers(request),
        entity=key.entity if key else "",
        operation=key.operation if key else "",
        worker_hostname=claiming.worker_name(task),
    )


def _closer(ticket: Ticket, error: str) -> Any:
    """Mark the claim dead with the dead letter; roll both back if the claim is not ours."""

    def close() -> None:
        if not claims.mark_dead(ticket, error=error):
            raise deadletters.ClaimMovedOn(ticket.key.entity)

    return close


def _queue_name(delivery: Mapping[str, Any]) -> str:
    # RabbitMQ's delivery_info has no queue name: with the default direct routing the routing
    # key is the queue name, which is what Celery itself assumes when it retries.
    return delivery.get("queue") or delivery.get("routing_key") or ""


def _replay_headers(request: Any) -> dict[str, Any]:
    headers = {
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "group_id": request.group,
        "retries": request.retries,
    }
    replay_of = header(request, deadletters.REPLAY_OF_HEADER)
    if replay_of is not None:
        headers[deadletters.REPLAY_OF_HEADER] = replay_of
    return {k: v for k, v in headers.items() if v is not None}


def warn_visibility_timeout(task: Task[Any, Any], countdown: float) -> None:
    """On Redis/SQS a countdown past the visibility timeout makes the broker redeliver early."""
    conf_ = task.app.conf
    url = str(conf_.broker_url or "")
    if not url.startswith(("redis", "rediss", "sqs")):
        return
    timeout = (conf_.broker_transport_options or {}).get("visibility_timeout", 3600)
    if countdown > float(timeout):
        log_event(
            logging.WARNING,
            "retry_exceeds_visibility_timeout",
            task=task.name,
            countdown=round(countdown, 1),
            visibility_timeout=timeout,
            hint="raise broker_transport_options['visibility_timeout'] or lower max_delay",
        )
