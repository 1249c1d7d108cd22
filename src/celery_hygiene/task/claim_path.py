"""The claim path (idempotent, not atomic): claim the key, run the body, record the outcome.

The claim is its own statement before the body and its completion another after it, so a
body's effects outside the database are covered too; a crash in between leaves a lease that
lapses (or that the worker frees at once, ``lost_runs``). ``atomic_path`` is the variant whose
claim, body and completion share one transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore, Reject, Retry

from celery_hygiene.claims import state as claims
from celery_hygiene.claims.dbretry import DB_ERRORS
from celery_hygiene.claims.spec import IdempotencySpec
from celery_hygiene.claims.state import ClaimKey, ClaimResult, Outcome
from celery_hygiene.exceptions import NotFinished
from celery_hygiene.task import claiming, failure, follow_up
from celery_hygiene.task.headers import retry_delay

if TYPE_CHECKING:
    from celery_hygiene.task.hygiene_task import HygieneTask

    AnyTask = HygieneTask[Any, Any]


def run(
    task: AnyTask,
    spec: IdempotencySpec,
    key: ClaimKey,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """``spec``: the task's own, or the task-id spec of an intent's run (task/enqueue.py)."""
    try:
        claim = claiming.acquire(task, key, using=claims.write_alias())
    except DB_ERRORS as exc:
        return follow_up.claim_unavailable(task, exc, key)
    if claim.outcome is not Outcome.ACQUIRED:
        return not_acquired(task, spec, key, claim)
    ticket = claim.ticket
    assert ticket is not None
    if ticket.attempts > task.hygiene_policy().max_attempts:
        return failure.give_up_lost(task, ticket.attempts, ticket=ticket, key=key)
    task.request.hygiene_ticket = ticket  # type: ignore[attr-defined]  # ours, on the Context
    try:
        value = task._body()(*args, **kwargs)
    except Retry as retry:
        claiming.release(ticket, retry_in=retry_delay(retry), error=repr(retry.exc))
        raise
    except NotFinished as not_finished:
        return claiming.not_finished(task, ticket, not_finished)
    except Ignore:
        # The body handed its work on (``self.replace()``) or chose to stop: it ran, and a
        # later duplicate must not run it again.
        task._complete(ticket, None)
        raise
    except Reject:
        claiming.release(ticket, retry_in=0.0, error="rejected by the task")
        raise
    except Exception as exc:
        failure.on_body_failure(task, exc, attempt=ticket.attempts, ticket=ticket, key=key)
        raise
    task._complete(ticket, value)
    return value


def not_acquired(task: AnyTask, spec: IdempotencySpec, key: ClaimKey, claim: ClaimResult) -> Any:
    """Another message holds or finished the key: wait for it, or answer as it did."""
    existing = claim.existing
    if spec.singleton:
        if not spec.wait:
            return claiming.singleton_busy(task, key)
        follow_up.defer(task, key, claim.wait_seconds)
    if existing is not None and existing.fingerprint != key.fingerprint:
        claiming.mismatch(task, spec, key, existing)
        return None
    if claim.outcome is Outcome.IN_PROGRESS:
        follow_up.defer(task, key, claim.wait_seconds)
    assert existing is not None
    claiming.duplicate(task, key, existing)
    if claim.outcome is Outcome.SUCCEEDED:
        return claiming.load_result(existing.result_json)
    return None
