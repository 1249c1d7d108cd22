"""The claim steps every claiming path shares: the key of a message, taking its claim, and
what the path says afterwards (completed, given back, not finished, a duplicate, a mismatch).

The paths themselves (``claim_path``, ``atomic_path``, ``eager_path``) decide when each step
runs; the claim's state machine and its SQL are ``claims/state.py``.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from django.db import connections
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from celery_hygiene import signals
from celery_hygiene.claims import state as claims
from celery_hygiene.claims.dbretry import with_db_retries
from celery_hygiene.claims.spec import IdempotencySpec
from celery_hygiene.claims.state import ClaimKey, ClaimResult, Ticket
from celery_hygiene.events import log_event
from celery_hygiene.exceptions import IdempotencyConflict, NotFinished, ResultNotStorable
from celery_hygiene.models import TaskClaim
from celery_hygiene.task import handover
from celery_hygiene.task.headers import RETRY_TOKEN_HEADER, header

if TYPE_CHECKING:
    from celery_hygiene.task.hygiene_task import HygieneTask

    AnyTask = HygieneTask[Any, Any]


def worker_name(task: AnyTask) -> str:
    return task.request.hostname or socket.gethostname()


def claim_key(
    task: AnyTask, spec: IdempotencySpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> ClaimKey:
    arguments = spec.bind_arguments(task.name, args, kwargs)
    return ClaimKey(
        entity=spec.entity_key(task.name, arguments),
        operation=spec.operation_name(task.name),
        task_name=task.name,
        fingerprint=spec.fingerprint(arguments),
    )


def acquire(task: AnyTask, key: ClaimKey, *, using: str) -> ClaimResult:
    request = task.request
    assert request.id is not None  # inside a task run Celery always sets it
    token = header(request, RETRY_TOKEN_HEADER)
    spec = task.hygiene_idempotency
    singleton = bool(spec and spec.singleton)
    return claims.acquire(
        key,
        owner_task_id=request.id,
        owner_worker=worker_name(task),
        lease_seconds=task.hygiene_lease_seconds(),
        using=using,
        retry_token=int(token) if token is not None else None,
        reclaim_after=0.0 if singleton else (spec.window if spec else None),
        reclaim_dead=singleton,
        any_fingerprint=singleton,
    )


def ticket_for(task: AnyTask, key: ClaimKey, attempts: int) -> Ticket:
    """A ticket for a claim we no longer hold one for, to close it as its owner."""
    assert task.request.id is not None  # inside a task run Celery always sets it
    return Ticket(
        key,
        task.request.id,
        worker_name(task),
        max(attempts, 1),
        task.hygiene_lease_seconds(),
        claims.write_alias(),
    )


# -- after the body --------------------------------------------------------------------------


def serialize_result(task: AnyTask, value: Any) -> str:
    try:
        return kombu_dumps(value)
    except (TypeError, ValueError) as exc:
        raise ResultNotStorable(
            f"{task.name}: the return value {type(value).__name__} cannot be stored as the "
            f"claim's result ({exc}). Return JSON-serializable data (ids, not objects)."
        ) from exc


def load_result(result_json: str | None) -> Any:
    return None if result_json is None else kombu_loads(result_json)


def complete(task: AnyTask, ticket: Ticket, value: Any) -> None:
    """Record the body's success on its claim (handed to the main process when it batches)."""
    try:
        result_json = serialize_result(task, value)
    except ResultNotStorable as exc:
        # The body has run and its effects are out in the world: the claim must say so,
        # or a duplicate would run it again. The task still fails loudly.
        claims.complete(ticket, None)
        log_event(logging.ERROR, "task_result_not_storable", task=task.name, id=task.request.id)
        raise exc from None
    if not task.request.is_eager and handover.hand_over(task, ticket, result_json):
        return  # the worker's main process records it with its next batch
    try:
        completed = with_db_retries(
            lambda: claims.complete(ticket, result_json), event="claim_complete_retry"
        )
    except Exception as exc:
        # The body ran and its result is returned; only the record of it is missing. The
        # claim keeps its lease, so a duplicate can at worst run the body again after it.
        log_claim(task, logging.ERROR, "claim_complete_failed", ticket.key, error=repr(exc))
        return
    if not completed:
        log_claim(
            task,
            logging.WARNING,
            "task_claim_lost",
            ticket.key,
            detail="lease expired and was taken over before completion",
        )


def release(ticket: Ticket, *, retry_in: float | None, error: str = "") -> None:
    """Give the claim back after a run that did not succeed; never raises.

    ``retry_in``: seconds until the retry that was scheduled, which alone may resume the claim
    (its retry token). None (eager mode, where no retry comes): forget the claim, so the
    developer's next call (after a fix) runs the body. If this fails the retry still happens;
    it waits out the lease instead.
    """
    try:
        if retry_in is None:
            claims.forget(ticket)
        else:
            claims.release_for_retry(ticket, countdown=retry_in, error=error)
    except Exception as exc:  # noqa: BLE001 - the body's error (or its retry) matters more
        log_event(
            logging.WARNING, "claim_release_failed", task=ticket.key.task_name, error=repr(exc)
        )


def not_finished(task: AnyTask, ticket: Ticket, reason: NotFinished) -> None:
    """The body ended on purpose without success: free the key for the next message."""
    if connections[ticket.using].in_atomic_block:
        claims.forget(ticket)  # part of the atomic body's transaction: retrying it is moot
    else:
        with_db_retries(lambda: claims.forget(ticket), event="claim_release_retry")
    log_claim(task, logging.INFO, "task_not_finished", ticket.key, detail=str(reason) or None)
    return None


# -- what a message that did not get the claim says --------------------------------------------


def log_claim(task: AnyTask, level: int, event: str, key: ClaimKey, **fields: Any) -> None:
    """One log line about this message and its claim key."""
    log_event(
        level,
        event,
        task=task.name,
        id=task.request.id,
        entity=key.entity,
        operation=key.operation,
        **fields,
    )


def singleton_busy(task: AnyTask, key: ClaimKey) -> None:
    _announce(
        task,
        logging.INFO,
        "task_singleton_busy",
        signals.task_singleton_busy,
        key,
        log_fields={},
        signal_kwargs={},
    )
    return None


def duplicate(task: AnyTask, key: ClaimKey, existing: TaskClaim) -> None:
    _announce(
        task,
        logging.INFO,
        "task_duplicate",
        signals.task_duplicate,
        key,
        log_fields={"status": existing.status, "first_id": existing.owner_task_id},
        signal_kwargs={"status": existing.status},
    )


def mismatch(task: AnyTask, spec: IdempotencySpec, key: ClaimKey, existing: TaskClaim) -> None:
    _announce(
        task,
        logging.WARNING,
        "task_claim_mismatch",
        signals.task_claim_mismatch,
        key,
        log_fields={"first_id": existing.owner_task_id},
        signal_kwargs={
            "existing_fingerprint": existing.fingerprint,
            "fingerprint": key.fingerprint,
        },
    )
    if spec.on_mismatch == "raise":
        raise IdempotencyConflict(
            f"{task.name}: ({key.entity!r}, {key.operation!r}) was already claimed by task "
            f"{existing.owner_task_id} with different arguments; this message was not run."
        )


def _announce(
    task: AnyTask,
    level: int,
    event: str,
    signal: Any,
    key: ClaimKey,
    *,
    log_fields: dict[str, Any],
    signal_kwargs: dict[str, Any],
) -> None:
    """One structured log line and one signal about this message and its claim."""
    where = {"entity": key.entity, "operation": key.operation}
    log_event(level, event, task=task.name, id=task.request.id, **where, **log_fields)
    send_safely(signal, sender=task, task_id=task.request.id, **where, **signal_kwargs)


def send_safely(signal: Any, **kwargs: Any) -> None:
    """Receivers are user code: their errors are logged, never raised into Celery's handlers."""
    for receiver, response in signal.send_robust(**kwargs):
        if isinstance(response, Exception):
            log_event(
                logging.ERROR,
                "signal_receiver_failed",
                receiver=getattr(receiver, "__qualname__", receiver),
                error=repr(response),
            )
