"""Bounded retries for the library's own bookkeeping writes when the database blips.

Used where giving up would lose information: storing a dead letter, and recording that a body
has completed (without that record a later duplicate could run the body again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connections
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from . import conf
from .events import log_event

T = TypeVar("T")


def with_db_retries(write: Callable[[], T], *, event: str) -> T:
    """Run ``write``; on connection errors reconnect and try again, a bounded number of times.

    ``event`` names the log line written before each new try (e.g. ``deadletter_write_retry``).
    The last error is re-raised when the attempts (``DEADLETTER_WRITE_ATTEMPTS``) are used up.
    """

    def before_sleep(retry_state: Any) -> None:
        log_event(
            logging.WARNING,
            event,
            attempt=retry_state.attempt_number,
            error=repr(retry_state.outcome.exception()) if retry_state.outcome else None,
        )
        # A broken connection stays broken; let Django open a fresh one for the next try.
        for connection in connections.all(initialized_only=True):
            connection.close()

    for attempt in Retrying(
        stop=stop_after_attempt(int(conf.get("DEADLETTER_WRITE_ATTEMPTS"))),
        wait=wait_exponential(multiplier=0.2, max=float(conf.get("DEADLETTER_WRITE_MAX_WAIT"))),
        retry=retry_if_exception_type((OperationalError, InterfaceError)),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            return write()
    raise AssertionError("unreachable: Retrying either returns or re-raises")
