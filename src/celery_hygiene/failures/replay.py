"""Send a dead letter back to its queue: once per operator decision, shared by CLI and admin.

::

    pending ──lock row; reopen the dead claim──▶ replaying ──publish after commit──▶ replayed
                                                   │
                                                   └── publish failed ──▶ pending (claim dead again)
                                                   └── process died here: ``recover`` settles it

Only ``pending`` rows move, under ``SELECT ... FOR UPDATE``: two operators (or two commands)
replaying the same dead letter enqueue it once; the second sees ``replaying``/``replayed``.
Publishing waits for the commit, so a worker never picks up a replay whose claim is not yet
re-opened. The replay gets a new task id; idempotency stays keyed on (entity, operation), so the
re-opened claim is owned by that new id and the body may run exactly once more.

A web process (gunicorn, uWSGI, ``get_wsgi_application()``) or a shell never runs the system
checks, which is where a ``runserver`` process happens to import the task modules: replay loads
them itself (:func:`load_task_modules`), as a worker does at start.

The app lookups are in ``replay_app``; what comes after a replay (``recover``, ``discard``,
``replay_outcome``) in ``recovery``.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from celery import Celery
from django.db import router, transaction
from django.db.models.functions import Now

from celery_hygiene import conf
from celery_hygiene.claims import state as claims
from celery_hygiene.events import log_event
from celery_hygiene.failures.deadletters import REPLAY_OF_HEADER, message_arguments
from celery_hygiene.failures.recovery import (
    RecoverError,
    ReplayOutcome,
    ReplayState,
    back_to_pending,
    discard,
    recover,
    replay_outcome,
)
from celery_hygiene.failures.replay_app import (
    celery_app,
    known_queues,
    load_task_modules,
    queue_refusal,
    task_registered,
)
from celery_hygiene.failures.selection import Selection
from celery_hygiene.models import ClaimStatus, DeadLetter, DeadLetterStatus, TaskClaim

__all__ = [  # recover, discard and the app lookups moved out; their old paths are kept
    "Outcome",
    "RecoverError",
    "ReplayOutcome",
    "ReplayResult",
    "ReplayState",
    "celery_app",
    "discard",
    "known_queues",
    "load_task_modules",
    "paced",
    "pending_ids",
    "publish",
    "queue_refusal",
    "recover",
    "refusal",
    "replay",
    "replay_outcome",
    "task_registered",
]


class Outcome(enum.Enum):
    REPLAYED = "replayed"
    # Inside a caller's transaction: the message goes out when that transaction commits.
    SCHEDULED = "scheduled"
    NOT_FOUND = "not_found"
    NOT_PENDING = "not_pending"
    UNKNOWN_TASK = "unknown_task"
    UNKNOWN_QUEUE = "unknown_queue"
    TRUNCATED = "truncated"
    EAGER = "eager"
    PUBLISH_FAILED = "publish_failed"


@dataclass
class ReplayResult:
    dead_letter_id: int
    outcome: Outcome
    task_id: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.REPLAYED, Outcome.SCHEDULED)


def refusal(
    dead_letter: DeadLetter, app: Celery, *, force: bool = False, queue: str | None = None
) -> ReplayResult | None:
    """Why this dead letter cannot be replayed now, or None if it can (no side effects)."""
    pk = dead_letter.pk
    if dead_letter.status == DeadLetterStatus.REPLAYING:
        return ReplayResult(
            pk,
            Outcome.NOT_PENDING,
            message=(
                f"dead letter {pk} is replaying as task {dead_letter.replayed_task_id}: sent, or "
                "its publisher died before sending. If it stays so, run `manage.py deadletter "
                f"recover {pk}` (or the admin's Recover action) to settle it."
            ),
        )
    if dead_letter.status != DeadLetterStatus.PENDING:
        detail = f" as task {dead_letter.replayed_task_id}" if dead_letter.replayed_task_id else ""
        return ReplayResult(
            pk,
            Outcome.NOT_PENDING,
            message=f"dead letter {pk} is {dead_letter.status}{detail}; only pending ones replay",
        )
    if app.conf.task_always_eager and not force:
        # Celery would run the task in this process (or, for a queue option, warn with
        # AlwaysEagerIgnored) instead of sending it to the workers an operator means.
        return ReplayResult(
            pk,
            Outcome.EAGER,
            message=(
                f"dead letter {pk} not replayed: task_always_eager is on in these settings "
                "(local or test settings?), so nothing here runs tasks on workers. Run the "
                "command with the settings your workers use, or use --force to publish it to "
                "this configuration's broker anyway."
            ),
        )
    registered, load_error = task_registered(app, dead_letter.task_name)
    if not registered:
        return ReplayResult(
            pk,
            Outcome.UNKNOWN_TASK,
            message=(
                f"task {dead_letter.task_name!r} of dead letter {pk} is not registered in Celery "
                f"app {app.main!r} (renamed or removed?); it was left pending. Deploy code that "
                "registers it, or set CELERY_HYGIENE['CELERY_APP'] if this is the wrong app."
                + load_error
            ),
        )
    unknown_queue = "" if force else queue_refusal(app, queue)
    if unknown_queue:
        return ReplayResult(pk, Outcome.UNKNOWN_QUEUE, message=f"dead letter {pk}: {unknown_queue}")
    if dead_letter.payload_truncated and not force:
        return ReplayResult(
            pk,
            Outcome.TRUNCATED,
            message=(
                f"dead letter {pk} has a truncated payload "
                f"({dead_letter.payload_note or 'flagged'}): "
                "a replay would not send the original arguments. Use --force to send it anyway."
            ),
        )
    return None


def replay(
    dead_letter_id: int,
    *,
    queue: str | None = None,
    force: bool = False,
    app: Celery | None = None,
) -> ReplayResult:
    """Replay one dead letter; never raises for an expected refusal or a broker error."""
    app = app or celery_app()
    using = router.db_for_write(DeadLetter)
    result = ReplayResult(dead_letter_id, Outcome.SCHEDULED)
    with transaction.atomic(using=using):
        dead_letter = (
            DeadLetter.objects.using(using).select_for_update().filter(pk=dead_letter_id).first()
        )
        if dead_letter is None:
            return ReplayResult(
                dead_letter_id,
                Outcome.NOT_FOUND,
                message=f"no dead letter with id {dead_letter_id}",
            )
        refused = refusal(dead_letter, app, force=force, queue=queue)
        if refused is not None:
            return refused
        task_id = str(uuid.uuid4())
        result.task_id = task_id
        dead_letter.status = DeadLetterStatus.REPLAYING
        dead_letter.replayed_task_id = task_id
        dead_letter.save(using=using, update_fields=["status", "replayed_task_id"])
        result.message = _reopen_claim(dead_letter, task_id, using)
        # The message must not reach a worker before the claim re-open is visible to it.
        transaction.on_commit(
            lambda: _publish_and_record(app, dead_letter, task_id, queue, using, result),
            using=using,
        )
    return result


def _reopen_claim(dead_letter: DeadLetter, task_id: str, using: str) -> str:
    """dead -> retrying, owned by the replay's task id. Returns a note for the operator, or ''.

    The claim lives where the router sends ``TaskClaim`` writes, which need not be the dead
    letter's database (``using``) in a multi-database project.
    """
    if not (dead_letter.entity and dead_letter.operation):
        return ""
    using = claims.write_alias()
    reopened = claims.reopen(
        dead_letter.entity,
        dead_letter.operation,
        owner_task_id=task_id,
        lease_seconds=float(conf.get("DEFAULT_LEASE_SECONDS")),
        using=using,
    )
    if reopened:
        return ""
    status = (
        TaskClaim.objects.using(using)
        .filter(entity=dead_letter.entity, operation=dead_letter.operation)
        .values_list("status", flat=True)
        .first()
    )
    if status == ClaimStatus.SUCCEEDED:
        return "its claim has succeeded since: the replay will be a duplicate and not run the body"
    return "" if status is None else f"its claim is {status}, not dead: left as it is"


def _publish_and_record(
    app: Celery,
    dead_letter: DeadLetter,
    task_id: str,
    queue: str | None,
    using: str,
    result: ReplayResult,
) -> None:
    """Runs after commit. Any error puts the row back to pending instead of escaping."""
    try:
        publish(app, dead_letter, task_id, queue=queue)
    except Exception as exc:  # noqa: BLE001 - a broker error must not leave the row in limbo
        back_to_pending(dead_letter, task_id, using)
        result.outcome = Outcome.PUBLISH_FAILED
        result.message = (
            f"publishing failed, dead letter {dead_letter.pk} is pending again: {exc!r}"
        )
        log_event(
            logging.ERROR,
            "deadletter_replay_failed",
            id=dead_letter.pk,
            task=dead_letter.task_name,
            error=repr(exc),
        )
        return
    DeadLetter.objects.using(using).filter(
        pk=dead_letter.pk, status=DeadLetterStatus.REPLAYING, replayed_task_id=task_id
    ).update(status=DeadLetterStatus.REPLAYED, replayed_at=Now())
    result.outcome = Outcome.REPLAYED
    log_event(
        logging.INFO,
        "deadletter_replayed",
        id=dead_letter.pk,
        task=dead_letter.task_name,
        new_task_id=task_id,
        queue=queue or dead_letter.queue or None,
    )


def publish(
    app: Celery, dead_letter: DeadLetter, task_id: str, *, queue: str | None = None
) -> None:
    """Send the original message again under a new id: same args, routing, priority, lineage."""
    args, kwargs = message_arguments(dead_letter)
    stored = dead_letter.headers or {}
    app.send_task(
        dead_letter.task_name,
        args=args,
        kwargs=kwargs,
        task_id=task_id,
        root_id=stored.get("root_id") or None,
        parent_id=stored.get("parent_id") or None,
        headers={REPLAY_OF_HEADER: dead_letter.pk},
        # An operator's replay is not a child of whatever task happens to run this code.
        add_to_parent=False,
        **_route(dead_letter, queue),
    )


def _route(dead_letter: DeadLetter, queue: str | None) -> dict[str, Any]:
    if queue:
        # A queue override drops the original exchange/routing key: they would send it back.
        return {"queue": queue}
    route: dict[str, Any] = {}
    if dead_letter.queue:
        route["queue"] = dead_letter.queue
    if dead_letter.exchange:
        route["exchange"] = dead_letter.exchange
    if dead_letter.routing_key:
        route["routing_key"] = dead_letter.routing_key
    if dead_letter.priority is not None:
        route["priority"] = dead_letter.priority
    return route


def pending_ids(selection: Selection, batch_size: int = 500) -> Iterator[int]:
    """Every pending id matching the selection, newest first, read in keyset-paged batches.

    Paging by id (not OFFSET) keeps each query cheap on a big table and skips rows a refusal left
    pending, so a bulk replay visits each row once even though it changes what matches.
    """
    base = selection.queryset().filter(status=DeadLetterStatus.PENDING).order_by("-pk")
    last: int | None = None
    while True:
        page = base if last is None else base.filter(pk__lt=last)
        ids = list(page.values_list("pk", flat=True)[:batch_size])
        yield from ids
        if len(ids) < batch_size:
            return
        last = ids[-1]


def paced(items: Iterable[int], rate: float) -> Iterator[int]:
    """Yield at most ``rate`` items per second (a steady pace, not bursts), so a bulk replay
    cannot flood the workers with thousands of messages that fail the same way again."""
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    for item in items:
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_at = max(next_at, time.monotonic() - interval) + interval
        yield item
