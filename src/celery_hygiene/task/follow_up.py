"""Follow-ups of a message that did not run its body to the end: a deferral behind a busy
claim, a re-send while the database cannot be asked about the claim, and a body's own
``self.retry()``. Each is published through ``publishing.send_or_keep``, so a publish the
broker refuses is parked in the outbox, not lost.

The retry the policy schedules after a failed body is ``failure.py``'s.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, cast

from celery.exceptions import Ignore, Retry

from celery_hygiene import conf
from celery_hygiene.claims.state import ClaimKey
from celery_hygiene.models import DeadLetterReason
from celery_hygiene.task import claiming, failure, publishing
from celery_hygiene.task.headers import (
    CLAIM_TRIES_HEADER,
    CLAIM_WAIT_HEADER,
    CLAIM_WAIT_HEADERS,
    DEFERS_HEADER,
    body_retry_headers,
    carried_headers,
    header,
)

if TYPE_CHECKING:
    from celery_hygiene.task.hygiene_task import HygieneTask

    AnyTask = HygieneTask[Any, Any]

FIRST_DEFER_SECONDS = 0.5


def follow_up(task: AnyTask, countdown: float, headers: dict[str, Any], *, reason: str) -> None:
    """Re-send this message (same id and retry count) later, without losing it."""
    sig = task.signature_from_request(
        task.request,
        countdown=countdown,
        retries=task.request.retries,
        headers=headers,
        # An absolute expiry was for the original delivery, which we accepted; a copy that
        # expires while waiting would leave the work undone.
        expires=None,
    )
    publishing.send_or_keep(sig, task=task, reason=reason)


def defer(task: AnyTask, key: ClaimKey, wait_seconds: float) -> None:
    """Someone holds a live lease: look again later instead of running or dropping the work.

    The first look comes after half a second, each next one twice as late, capped by the
    holder's lease and ``DEFER_MAX_SECONDS``: a duplicate of a body that is about to finish
    (or whose completion is in the worker's next batch) is answered at once, one of an
    hour-long body does not poll the broker every second. Re-published with the same id and
    retry count (this is not a failed attempt), then the current delivery is acknowledged
    via Ignore. Never sleeps in the worker.
    """
    # The claim was read: whatever outage this message waited out is over.
    headers = carried_headers(task.request, drop=CLAIM_WAIT_HEADERS)
    defers = int(header(task.request, DEFERS_HEADER) or 0)
    backoff = FIRST_DEFER_SECONDS * 2 ** min(defers, 16)
    countdown = min(float(conf.get("DEFER_MAX_SECONDS")), wait_seconds, backoff)
    countdown = max(FIRST_DEFER_SECONDS, countdown) + random.uniform(0, 0.5)
    claiming.log_claim(task, logging.INFO, "task_claim_busy", key, retry_in=round(countdown, 2))
    headers[DEFERS_HEADER] = defers + 1
    follow_up(task, countdown, headers, reason="defer")
    raise Ignore()


def claim_unavailable(task: AnyTask, error: BaseException, key: ClaimKey) -> None:
    """The database could not be asked who owns the key: come back later, body not run.

    This is not an attempt of the body: it has its own budget (``CLAIM_RETRY_SECONDS``,
    minutes, enough for a restart or a failover) and ignores the policy's ``retry_on``.
    """
    request = task.request
    now = time.time()
    since = float(header(request, CLAIM_WAIT_HEADER) or now)
    waited = now - since
    if waited > float(conf.get("CLAIM_RETRY_SECONDS")):
        failure.dead_letter(
            task,
            error,
            reason=DeadLetterReason.GAVE_UP,
            attempts=request.retries + 1,
            ticket=None,
            key=key,
        )
        raise error
    tries = int(header(request, CLAIM_TRIES_HEADER) or 0) + 1
    countdown = min(float(conf.get("CLAIM_RETRY_MAX_DELAY")), 0.5 * 2**tries)
    countdown += random.uniform(0, countdown / 2)
    claiming.log_claim(
        task,
        logging.WARNING,
        "task_claim_unavailable",
        key,
        waited=round(waited, 1),
        retry_in=round(countdown, 2),
        error=repr(error),
    )
    headers = carried_headers(request)
    headers[CLAIM_WAIT_HEADER] = since
    headers[CLAIM_TRIES_HEADER] = tries
    follow_up(task, countdown, headers, reason="claim_unavailable")
    raise Ignore()


def body_retry(
    task: AnyTask, celery_retry: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``HygieneTask.retry``: a body's own ``self.retry()``, published like the library's
    retries. ``celery_retry`` is Celery's ``Task.retry`` bound to the task, which plans it."""
    request = task.request
    if len(args) < 7 and kwargs.get("max_retries") is None:
        # Celery's cap is the task's max_retries; a task whose policy caps otherwise (or
        # that Celery would retry forever) is held to its policy's cap.
        cap = task._retry_cap()
        if cap != task.max_retries:
            kwargs["max_retries"] = cap
    kwargs["headers"] = body_retry_headers(request, kwargs.get("headers"))
    # Eager or called directly there is no broker: Celery raises or runs the retry itself.
    on_broker = not (request.is_eager or request.called_directly)
    throw = True
    if on_broker:
        throw, args, kwargs = _without_throw(args, kwargs)
    try:
        # Celery builds the retry message (arguments, countdown, max_retries) but does not
        # send it: publishing.send_or_keep does, so a refused publish is parked, not lost.
        with _unsent(request) if on_broker else nullcontext():
            planned = celery_retry(*args, **kwargs)
    except Retry:
        raise
    except Exception as exc:
        setattr(exc, failure.CAP_REACHED, True)
        raise
    if not on_broker:
        return planned
    sig = cast(Any, planned).sig  # celery-types does not declare Retry.sig
    publishing.send_or_keep(sig, task=task, reason="retry")
    retry = Retry(exc=planned.exc, when=planned.when, sig=sig)
    if throw:
        raise retry
    return retry


def _without_throw(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, tuple[Any, ...], dict[str, Any]]:
    """Celery's ``retry(args, kwargs, exc, throw, ...)``: take ``throw`` out, ask for False."""
    if len(args) > 3:
        return bool(args[3]), (*args[:3], False, *args[4:]), kwargs
    throw = bool(kwargs.pop("throw", True))
    return throw, args, {**kwargs, "throw": False}


@contextmanager
def _unsent(request: Any) -> Iterator[None]:
    """Inside, Celery's ``Task.retry`` returns its planned Retry without publishing it.

    Celery skips the publish for an eager request and hands back the Retry with its message
    (``Retry.sig``); nothing else in ``Task.retry`` reads the flag.
    """
    was_eager = request.is_eager
    request.is_eager = True
    try:
        yield
    finally:
        request.is_eager = was_eager
