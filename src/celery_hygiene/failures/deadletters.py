"""Writing dead letters: a task that will not run again on its own is stored, never dropped.

The write is retried a bounded number of times when the database is unreachable; if it still
fails, the caller rejects the message to the broker (so a RabbitMQ dead-letter exchange keeps
it) after the full payload has been logged at ERROR.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import router, transaction
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from celery_hygiene import conf
from celery_hygiene.claims.dbretry import with_db_retries
from celery_hygiene.events import log_event
from celery_hygiene.failures.redaction import redact
from celery_hygiene.models import DeadLetter

TRACEBACK_MAX_CHARS = 64 * 1024
REPLAY_OF_HEADER = "celery_hygiene_replay_of"


class ClaimMovedOn(Exception):
    """Raised by a ``store(also=...)`` callback: the claim is no longer ours, store nothing."""


@dataclass
class FailedTask:
    """Everything known about a task at the moment it is given up."""

    task_name: str
    task_id: str
    args: Any
    kwargs: Any
    exception: BaseException
    reason: str
    attempts: int
    first_failed_at: dt.datetime
    last_failed_at: dt.datetime
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    priority: int | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    entity: str = ""
    operation: str = ""
    worker_hostname: str = ""
    traceback: str = ""

    def log_fields(self) -> dict[str, Any]:
        return {
            "task": self.task_name,
            "id": self.task_id,
            "attempts": self.attempts,
            "reason": self.reason,
            "exc": type(self.exception).__name__,
            "entity": self.entity or None,
            "queue": self.queue or None,
        }


@dataclass(frozen=True)
class SafePayload:
    args: Any
    kwargs: Any
    truncated: bool
    note: str


def safe_payload(args: Any, kwargs: Any, max_bytes: int) -> SafePayload:
    """Args/kwargs as JSON the database can hold, exactly as sent when possible.

    kombu's JSON keeps datetimes, Decimals, UUIDs and bytes as tagged values, so a replay
    (``message_arguments``) gets back the same types the task received.
    """
    try:
        encoded_args = kombu_dumps(list(args or ()))
        encoded_kwargs = kombu_dumps(dict(kwargs or {}))
    except (TypeError, ValueError) as exc:
        return SafePayload(
            [repr(args)[:max_bytes]],
            {"__repr__": repr(kwargs)[:max_bytes]},
            True,
            f"not JSON-serializable ({type(exc).__name__}); stored repr()",
        )
    if not _storable_json(encoded_args) or not _storable_json(encoded_kwargs):
        # PostgreSQL's jsonb refuses \u0000 and unpaired surrogates; refusing the whole dead
        # letter would lose it, so keep an escaped copy and flag it as not replayable.
        return SafePayload(
            [_escaped(encoded_args)[:max_bytes]],
            {"__escaped__": _escaped(encoded_kwargs)[:max_bytes]},
            True,
            "contains NUL or unpaired surrogate characters PostgreSQL cannot store; stored escaped",
        )
    size = len(encoded_args) + len(encoded_kwargs)
    if size > max_bytes:
        half = max(max_bytes // 2, 1)
        return SafePayload(
            ["<truncated>", encoded_args[:half]],
            {"__truncated__": encoded_kwargs[:half]},
            True,
            f"payload of {size} bytes exceeds PAYLOAD_MAX_BYTES={max_bytes}; stored truncated",
        )
    return SafePayload(json.loads(encoded_args), json.loads(encoded_kwargs), False, "")


def _storable_json(encoded: str) -> bool:
    """False if the decoded value holds text PostgreSQL's jsonb refuses (NUL, lone surrogate)."""
    if "\\u0000" in encoded:
        return False
    try:
        json.dumps(json.loads(encoded), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(encoded: str) -> str:
    """The JSON text itself, as a plain string: its escapes are just characters then."""
    return encoded.encode("utf-8", "backslashreplace").decode("utf-8")


def message_arguments(dead_letter: DeadLetter) -> tuple[list[Any], dict[str, Any]]:
    """The args/kwargs to re-send on replay, with kombu-tagged types restored."""
    return kombu_loads(json.dumps(dead_letter.args)), kombu_loads(json.dumps(dead_letter.kwargs))


def format_traceback(exc: BaseException) -> str:
    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > TRACEBACK_MAX_CHARS:
        text = (
            text[: TRACEBACK_MAX_CHARS // 2]
            + "\n... [truncated] ...\n"
            + text[-TRACEBACK_MAX_CHARS // 2 :]
        )
    return text


def _build(failed: FailedTask) -> DeadLetter:
    payload = safe_payload(failed.args, failed.kwargs, int(conf.get("PAYLOAD_MAX_BYTES")))
    replay_of = failed.headers.get(REPLAY_OF_HEADER)
    return DeadLetter(
        task_name=failed.task_name,
        task_id=failed.task_id,
        args=payload.args,
        kwargs=payload.kwargs,
        payload_truncated=payload.truncated,
        payload_note=payload.note,
        queue=failed.queue or "",
        exchange=failed.exchange or "",
        routing_key=failed.routing_key or "",
        priority=failed.priority,
        headers=_json_safe(failed.headers),
        entity=failed.entity,
        operation=failed.operation,
        reason=failed.reason,
        exception_type=_qualified_name(type(failed.exception)),
        exception_message=str(failed.exception)[:10_000],
        traceback=failed.traceback or format_traceback(failed.exception),
        attempts=failed.attempts,
        first_failed_at=failed.first_failed_at,
        last_failed_at=failed.last_failed_at,
        worker_hostname=failed.worker_hostname or "",
        replay_of_id=_as_id(replay_of),
    )


def store(failed: FailedTask, *, also: Callable[[], Any] | None = None) -> DeadLetter:
    """Save the dead letter (and run ``also``, e.g. closing the claim, in the same transaction).

    ``also`` may return a dict of field values to set on the dead letter, or raise
    :class:`ClaimMovedOn` to store nothing.

    Retries on connection errors; re-raises the last one when the attempts are used up.
    """
    dead_letter = _build(failed)
    using = router.db_for_write(DeadLetter)

    def write() -> DeadLetter:
        dead_letter.pk = None
        with transaction.atomic(using=using):
            # ``also`` runs first: it may refuse (ClaimMovedOn) or correct fields (attempts).
            changes = also() if also is not None else None
            for name, value in (changes or {}).items():
                setattr(dead_letter, name, value)
            dead_letter.save(using=using, force_insert=True)
        return dead_letter

    return with_db_retries(write, event="deadletter_write_retry")


def log_unstorable(failed: FailedTask, error: BaseException) -> None:
    """Last resort when the database cannot take the dead letter: the whole payload, at ERROR."""
    payload = {
        "task_name": failed.task_name,
        "task_id": failed.task_id,
        "args": failed.args,
        "kwargs": failed.kwargs,
        "queue": failed.queue,
        "routing_key": failed.routing_key,
        "headers": failed.headers,
        "entity": failed.entity,
        "operation": failed.operation,
        "exception": repr(failed.exception),
        "attempts": failed.attempts,
    }
    log_event(
        logging.ERROR,
        "deadletter_write_failed",
        **failed.log_fields(),
        error=repr(error),
        # Logs travel further than the database: secrets are masked (REDACT_KEYS), as on screen.
        payload=json.dumps(redact(payload), default=repr),
    )


def _as_id(value: Any) -> int | None:
    """The replay link from a header; anything but a plain id is ignored rather than trusted."""
    text = str(value) if value is not None else ""
    return int(text) if text.isdigit() else None


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# -- display helpers (CLI and admin) ---------------------------------------------------------------

TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def format_utc(value: dt.datetime | None, empty: str = "-") -> str:
    """The one way a time is shown to an operator: UTC, to the second, labelled."""
    if value is None:
        return empty
    if value.tzinfo is None:  # USE_TZ=False projects store naive UTC-less local times
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value.astimezone(dt.UTC).strftime(TIME_FORMAT)


def short_type(exception_type: str) -> str:
    """``requests.exceptions.ConnectTimeout`` -> ``ConnectTimeout`` (the full name is a tooltip)."""
    return exception_type.rsplit(".", 1)[-1]


_LOST = re.compile(
    r"was delivered (?P<deliveries>\d+) times without finishing \(max_attempts=(?P<max>\d+)\)"
    r"(?:; the worker running it was lost each time)?"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def describe_failure(exception_type: str, message: str) -> str:
    """The stored exception message, made readable where Celery's own text is cryptic.

    - A hard time limit is stored as ``TimeLimitExceeded(8.0,)``: say which limit, in seconds.
    - A message that kept killing workers reads "delivered 3 times (max_attempts=2)": the last
      delivery was refused, not run, so say how many runs were lost.
    """
    message = " ".join(message.split())
    name = short_type(exception_type)
    if name == "TimeLimitExceeded":
        number = _NUMBER.search(message)
        limit = f" of {float(number.group()):g} s" if number else ""
        return (
            f"hard time limit{limit} exceeded: the worker killed the process running it "
            "(no exception was raised in the task)"
        )
    if name == "SoftTimeLimitExceeded" and message in ("", "SoftTimeLimitExceeded()"):
        return "soft time limit exceeded and the task did not handle it"
    lost = _LOST.search(message)
    if lost:
        return _LOST.sub(
            f"was not run again on delivery {lost.group('deliveries')}: its "
            f"max_attempts={lost.group('max')} runs are used up and the worker running it was "
            "lost each time",
            message,
        )
    return message
