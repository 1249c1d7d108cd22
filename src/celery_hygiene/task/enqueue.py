"""``task.delay_on_commit()`` / ``task.apply_async_on_commit()``: enqueue that loses nothing.

Celery's ``DjangoTask.delay_on_commit`` is ``transaction.on_commit(partial(self.delay, ...))``:
a producer that dies between its COMMIT and the callback, or a publish that fails after it,
loses the task while the business data is committed. Here the call writes the message as an
*intent* in the caller's transaction (one INSERT, on the intent table's database, ``using=``
honoured), then publishes it after the COMMIT; whatever goes wrong later, a relay re-sends the
intent until its run is settled (``failures/intents.py``). A rollback leaves nothing.

Every HygieneTask has these methods (``OnCommitMixin``, one base of its class). Arguments are
checked before anything is written: they must bind to the task's signature and compute its
claim key, and the payload must fit ``PAYLOAD_MAX_BYTES`` (an intent is the message: it is never
truncated).
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from celery import uuid
from django.db import connections, router, transaction
from django.utils import timezone
from kombu.utils.json import dumps as kombu_dumps

from celery_hygiene import conf
from celery_hygiene.claims.spec import IdempotencySpec
from celery_hygiene.claims.state import ClaimKey
from celery_hygiene.exceptions import PayloadTooLarge
from celery_hygiene.failures import intents
from celery_hygiene.models import EnqueueIntent

if TYPE_CHECKING:
    from celery import Task

# Celery's per-task publish options that decide where and how the message goes: kept in the
# intent so a re-sent copy is routed like the first.
_EXEC_OPTIONS = (
    "queue",
    "routing_key",
    "exchange",
    "priority",
    "expires",
    "serializer",
    "delivery_mode",
    "compression",
    "time_limit",
    "soft_time_limit",
)


class OnCommitMixin:
    """``delay_on_commit`` and ``apply_async_on_commit`` for HygieneTask (Celery's names and
    call shape; each returns the task id that will run, a ``str``)."""

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> str:
        """Like ``delay``, sent once the caller's transaction commits; never lost after that."""
        return self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Any,
    ) -> str:
        """Like ``apply_async``; ``using``: the database alias of the caller's transaction
        (default: the intent table's write alias, ``router.db_for_write(EnqueueIntent)``).

        For a task with a claim, a second call for the same ``(entity, operation)`` while the
        first is unsettled writes nothing and returns the first call's task id.
        """
        task = cast("Task[Any, Any]", self)
        intent = build_intent(task, tuple(args or ()), dict(kwargs or {}), options)
        alias = using or router.db_for_write(EnqueueIntent)
        if task.app.conf.task_always_eager:
            # Eager mode (users' unit tests): no broker to lose the message, no relay to settle
            # an intent. Run it on commit, as Celery's delay_on_commit does.
            run = functools.partial(
                intents.publish,
                task.app,
                task.name,
                intent.task_id,
                intent.args,
                intent.kwargs,
                intent.options,
            )
            transaction.on_commit(run, using=alias)
            return intent.task_id
        task_id = intents.write(intent, using=alias)
        if task_id != intent.task_id:
            return task_id  # joined an unsettled intent of the same key: it will run
        send = functools.partial(intents.publish_after_commit, task.app, intent)
        if connections[alias].in_atomic_block:
            transaction.on_commit(send, using=alias)
        else:
            send()
        return task_id


def build_intent(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> intents.Intent:
    """Check the call and turn it into an intent; raises before anything is written."""
    _check_arguments(task, args, kwargs)
    payload = kombu_dumps({"args": list(args), "kwargs": kwargs})
    limit = int(conf.get("PAYLOAD_MAX_BYTES"))
    size = len(payload.encode())
    if size > limit:
        raise PayloadTooLarge(
            f"{task.name}: the arguments are {size} bytes as JSON, over "
            f"CELERY_HYGIENE['PAYLOAD_MAX_BYTES'] ({limit}); nothing was enqueued. Pass a "
            "reference (a primary key, a storage path) instead of the data, or raise the limit."
        )
    options = _publish_options(task, options)
    task_id = str(options.pop("task_id", None) or uuid())
    spec: IdempotencySpec | None = getattr(task, "hygiene_idempotency", None)
    if spec is not None:
        key = cast(Any, task)._claim_key(spec, args, kwargs)
        entity, operation, unique = key.entity, key.operation, True
    else:
        entity, operation, unique = task_id, intents.task_id_operation(task.name), False
    eta = options.get("eta")
    return intents.Intent(
        task_name=task.name,
        task_id=task_id,
        args=list(args),
        kwargs=kwargs,
        options=options,
        entity=entity,
        operation=operation,
        unique_key=unique,
        not_before=dt.datetime.fromisoformat(eta) if isinstance(eta, str) else None,
    )


def _check_arguments(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    header = getattr(task, "__header__", None)
    try:
        if header is not None:
            header(*args, **kwargs)
        else:
            inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError as exc:  # Celery's apply_async raises the same for a bad call
        raise TypeError(
            f"{task.name}: arguments do not fit the task signature: {exc}; nothing was enqueued."
        ) from exc


def _publish_options(task: Task[Any, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The task's own routing options under the call's, countdown and expires made absolute
    (a re-send minutes later must not run later, nor expire later, than the first send)."""
    exec_options = cast(Any, task)._get_exec_options()
    options = {k: exec_options.get(k) for k in _EXEC_OPTIONS if exec_options.get(k) is not None}
    options.update(given)
    now = timezone.now()
    countdown = options.pop("countdown", None)
    if countdown is not None and options.get("eta") is None:
        options["eta"] = now + dt.timedelta(seconds=float(countdown))
    if isinstance(options.get("eta"), dt.datetime):
        options["eta"] = options["eta"].isoformat()
    expires = options.get("expires")
    if isinstance(expires, int | float) and not isinstance(expires, bool):
        options["expires"] = (now + dt.timedelta(seconds=float(expires))).isoformat()
    elif isinstance(expires, dt.datetime):
        options["expires"] = expires.isoformat()
    queue = options.get("queue")
    if queue is not None and not isinstance(queue, str):
        options["queue"] = getattr(queue, "name", str(queue))
    exchange = options.get("exchange")
    if exchange is not None and not isinstance(exchange, str):
        options["exchange"] = getattr(exchange, "name", str(exchange))
    return options


# -- hygienic_task: a run keyed by its task id --------------------------------------------


@dataclass(frozen=True)
class _TaskIdSpec(IdempotencySpec):
    """A claim keyed by the message's task id (``(task_id, "intent:<task name>")``), for a
    task without a claim of its own that was sent for an intent: a re-sent copy finds it."""

    task_id: str = ""

    def bind_arguments(
        self, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        return {}

    def entity_key(self, task_name: str, arguments: dict[str, Any]) -> str:
        return self.task_id

    def operation_name(self, task_name: str) -> str:
        return intents.task_id_operation(task_name)

    def fingerprint(self, arguments: dict[str, Any]) -> str:
        return ""


def task_id_spec(task: Task[Any, Any]) -> IdempotencySpec | None:
    """In the pool process: the task-id claim for a claim-less task's intent message, else None."""
    request = task.request
    if request.id is None or not _has_intent_header(request):
        return None
    return _TaskIdSpec(
        entity="",
        operation=None,
        atomic=False,
        lease_seconds=None,
        on_mismatch="warn",
        signature=inspect.Signature(),
        function_name=task.name,
        task_id=request.id,
    )


def task_id_claim_key(task: Any, request: Any) -> ClaimKey | None:
    """In the worker's main process (lease renewal): the same key, from Celery's Request."""
    if getattr(task, "hygiene_idempotency", None) is not None:
        return None
    headers = getattr(request, "_request_dict", None) or {}
    if not headers.get(intents.INTENT_HEADER) or not request.id:
        return None
    return ClaimKey(
        entity=request.id,
        operation=intents.task_id_operation(task.name),
        task_name=task.name,
        fingerprint="",
    )


def _has_intent_header(request: Any) -> bool:
    headers = request.headers or {}
    return bool(headers.get(intents.INTENT_HEADER, getattr(request, intents.INTENT_HEADER, None)))
