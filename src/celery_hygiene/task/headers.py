"""The headers a message carries from one delivery to the next, and how a follow-up gets them.

A follow-up of a message (the retry of a failed body, a deferral behind a busy claim, a re-send
while the database is away) keeps the request's own headers minus those that described one
wait; these are the names and the few functions every path builds them with.
"""

from __future__ import annotations

import datetime as dt
import numbers
import time
from collections.abc import Mapping
from typing import Any

from celery.exceptions import Retry
from django.utils import timezone

from celery_hygiene.failures import outbox

FIRST_FAILED_HEADER = "celery_hygiene_first_failed_at"
FIRST_STARTED_HEADER = "celery_hygiene_first_started_at"
# The claim attempt a scheduled retry was released at: only that message resumes the claim.
RETRY_TOKEN_HEADER = "celery_hygiene_retry_token"
# When a message first found the database unreachable at claim time (epoch seconds).
CLAIM_WAIT_HEADER = "celery_hygiene_claim_wait_since"
CLAIM_TRIES_HEADER = "celery_hygiene_claim_tries"
# How many times this message has waited for a busy claim: its next look comes sooner than the
# holder's lease, then later and later (the holder is usually about to finish).
DEFERS_HEADER = "celery_hygiene_defers"
# Headers that describe one wait (for the database at claim time, for a busy claim). A message
# that got past it (its claim was read, or its body ran) does not carry it into the next one: a
# short blip long after an old outage gets the whole CLAIM_RETRY_SECONDS budget again.
CLAIM_WAIT_HEADERS = (CLAIM_WAIT_HEADER, CLAIM_TRIES_HEADER)
ATTEMPT_WAIT_HEADERS = (*CLAIM_WAIT_HEADERS, DEFERS_HEADER)
# Never copied into a follow-up message: the outbox row this copy was sent for (the follow-up
# is another message), and RabbitMQ's dead-lettering history (it trips cycle detection).
NOT_CARRIED = (
    outbox.ROW_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)


def header(request: Any, name: str) -> Any:
    headers = request.headers or {}
    return headers.get(name, getattr(request, name, None))


def carried_headers(request: Any, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's own headers, for a follow-up of this message (minus those in ``drop``)."""
    headers = dict(request.headers or {})
    for name in (*NOT_CARRIED, *drop):
        headers.pop(name, None)
    return headers


def attempt_headers(request: Any) -> dict[str, Any]:
    """Headers for the next attempt of a body that ran: its deadlines, none of its waits."""
    now = time.time()
    headers = carried_headers(request, drop=ATTEMPT_WAIT_HEADERS)
    headers[FIRST_FAILED_HEADER] = header(request, FIRST_FAILED_HEADER) or now
    headers[FIRST_STARTED_HEADER] = header(request, FIRST_STARTED_HEADER) or now
    return headers


def body_retry_headers(request: Any, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """A body's ``self.retry(headers=...)``: the caller's headers over the carried ones."""
    headers = {**attempt_headers(request), **(given or {})}
    ticket = getattr(request, "hygiene_ticket", None)
    if ticket is not None:
        headers[RETRY_TOKEN_HEADER] = ticket.attempts
    return headers


def elapsed(request: Any) -> float:
    """Seconds since the first attempt of this message started (0 if unknown)."""
    started = header(request, FIRST_STARTED_HEADER)
    return max(0.0, time.time() - float(started)) if started else 0.0


def from_epoch(value: Any) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)


def retry_delay(retry: Retry) -> float:
    """The seconds until a body's own ``self.retry()`` runs again."""
    when = retry.when
    if when is None:
        return 0.0
    if isinstance(when, numbers.Real):
        return float(when)
    return max(0.0, (when - timezone.now()).total_seconds())
