"""Bounded retries for the library's own bookkeeping writes when the database blips.

Used where giving up would lose information: storing a dead letter, recording that a body has
completed (without that record a later duplicate could run the body again), and every write of
the worker's main process. The budget is a time, not a count (``DB_RETRY_SECONDS``): long
enough to ride out a PostgreSQL restart or a PgBouncer's ``server_login_retry``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connections
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from celery_hygiene import conf
from celery_hygiene.events import log_event

T = TypeVar("T")
DB_ERRORS = (OperationalError, InterfaceError)
_FIRST_WAIT = 0.2  # seconds; wait_exponential(multiplier=0.2)'s first pause


def close_broken_connections() -> None:
    """Drop this thread's connections so Django opens fresh ones: a broken one stays broken.

    Django only notices a dead connection at the next request boundary, which a worker process
    never has; without this, one ``pg_terminate_backend`` breaks every later write of the process.
    """
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue  # the caller's transaction decides; closing it under them would hide that
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - already broken; closing is best effort
            connection.connection = None


def with_db_retries(write: Callable[[], T], *, event: str, budget: float | None = None) -> T:
    """Run ``write``; on connection errors reconnect and try again until the budget is spent.

    ``event`` names the log line written before each new try (e.g. ``deadletter_write_retry``).
    The last error is re-raised when ``budget`` seconds (default ``DB_RETRY_SECONDS``) are used.
    """

    # The first try without tenacity: this runs once per task (completion), and building the
    # Retrying machinery cost more client CPU than it protects on the path that succeeds.
    started = time.monotonic()
    try:
        return write()
    except DB_ERRORS as exc:
        seconds = float(conf.get("DB_RETRY_SECONDS") if budget is None else budget)
        if time.monotonic() - started >= seconds:
            raise
        log_event(logging.WARNING, event, attempt=1, error=repr(exc))
        close_broken_connections()
    time.sleep(min(_FIRST_WAIT, max(0.0, seconds - (time.monotonic() - started))))

    def before_sleep(retry_state: Any) -> None:
        log_event(
            logging.WARNING,
            event,
            attempt=retry_state.attempt_number + 1,
            error=repr(retry_state.outcome.exception()) if retry_state.outcome else None,
        )
        close_broken_connections()

    for attempt in Retrying(
        stop=stop_after_delay(max(0.0, seconds - (time.monotonic() - started))),
        wait=wait_exponential(multiplier=0.2, max=float(conf.get("DB_RETRY_MAX_WAIT"))),
        retry=retry_if_exception_type(DB_ERRORS),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            return write()
    raise AssertionError("unreachable: Retrying either returns or re-raises")
