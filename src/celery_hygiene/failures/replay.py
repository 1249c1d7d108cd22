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
"""

from __future__ import annotations

import contextlib
import difflib
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
from django.utils import timezone
from django.utils.module_loading import import_string

from celery_hygiene import conf
from celery_hygiene.claims import state as claims
from celery_hygiene.events import log_event
from celery_hygiene.failures.deadletters import REPLAY_OF_HEADER, format_utc, message_arguments
from celery_hygiene.failures.selection import Selection
from celery_hygiene.models import ClaimStatus, DeadLetter, DeadLetterStatus, TaskClaim
from celery_hygiene.task import routing
from celery_hygiene.task.discovery import import_task_modules


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


def celery_app() -> Celery:
    """``CELERY_HYGIENE["CELERY_APP"]`` (dotted path or app), else ``celery.current_app``.

    current_app is the project's app as long as it was imported, which the usual
    ``proj/__init__.py`` (``from .celery import app``) does for every manage.py command.
    """
    configured = conf.get("CELERY_APP")
    if configured:
        app: Celery = import_string(configured) if isinstance(configured, str) else configured
        return app
    from celery import current_app

    # celery-types declares current_app as the app itself; at runtime it is a Proxy.
    current: Celery = current_app._get_current_object()  # type: ignore[attr-defined]
    return current


_loaded_apps: set[int] = set()


def load_task_modules(app: Celery) -> None:
    """Import the app's task modules as a worker does at start; once per app and process.

    That is the ``imports``/``include`` modules, a pending ``app.autodiscover_tasks()`` (Celery
    runs it lazily, when a worker imports its default modules), and, like the default
    ``autodiscover_tasks()`` of a Django project, every installed app's ``tasks`` module. Not
    ``app.loader.import_default_modules()``: Celery's Django fixup runs the system checks from it.
    """
    if id(app) in _loaded_apps:
        return
    import_task_modules(app)
    _loaded_apps.add(id(app))


def task_registered(app: Celery, name: str) -> tuple[bool, str]:
    """Is ``name`` a task of ``app``? Loads the task modules first if needed.

    Returns (registered, why not loaded) so an import error in a task module is shown to the
    operator instead of a misleading "not registered".
    """
    if name in app.tasks:
        return True, ""
    try:
        load_task_modules(app)
    except Exception as exc:  # noqa: BLE001 - reported to the operator with the refusal
        return name in app.tasks, f" Loading the task modules failed: {exc!r}."
    return name in app.tasks, ""


def known_queues(app: Celery) -> set[str]:
    """Queues a replay may be sent to: ``CELERY_HYGIENE_QUEUES``, ``task_queues``, the default."""
    names = {app.conf.task_default_queue or "celery"}
    with contextlib.suppress(Exception):  # a broken declaration is the checks' business
        names.update(routing.declared_queues(app))
    names.update(queue.name for queue in app.conf.task_queues or ())
    return names


def queue_refusal(app: Celery, queue: str | None) -> str:
    """Why ``--queue`` is refused ('' if it is declared): a typo would park the message in a
    queue that no worker consumes, and the operator would read "replayed"."""
    if not queue:
        return ""
    known = known_queues(app)
    if queue in known:
        return ""
    close = difflib.get_close_matches(queue, sorted(known), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"queue {queue!r} is not declared (CELERY_HYGIENE_QUEUES or the Celery app's "
        f"task_queues: {', '.join(sorted(known))}); no worker may consume it.{hint} "
        "Use --force to send it there anyway."
    )


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
        _undo(dead_letter, task_id, using)
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


def _undo(dead_letter: DeadLetter, task_id: str, using: str, *, keep_task_id: bool = False) -> None:
    """Back to pending, and the claim back to dead so a duplicate cannot take over its lease.

    ``keep_task_id``: ``recover`` keeps the id of the replay that never ran, as evidence (the
    message may still surface; the next replay overwrites it). The claim is written where the
    router sends claim writes, which need not be the dead letter's database (``using``).
    """
    claims_alias = claims.write_alias()
    with transaction.atomic(using=using), transaction.atomic(using=claims_alias):
        DeadLetter.objects.using(using).filter(
            pk=dead_letter.pk, status=DeadLetterStatus.REPLAYING, replayed_task_id=task_id
        ).update(status=DeadLetterStatus.PENDING, replayed_task_id=task_id if keep_task_id else "")
        if dead_letter.entity and dead_letter.operation:
            claims.mark_dead_for_owner(
                dead_letter.entity,
                dead_letter.operation,
                owner_task_id=task_id,
                error="replay could not be published",
                using=claims_alias,
            )


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


def recover(dead_letter_id: int, *, force: bool = False) -> str:
    """Settle a dead letter left in ``replaying`` (its process died between commit and publish).

    For an idempotent task the claim tells what happened: if the replay's task id ran (it owns
    the claim and has attempted it), the row becomes ``replayed``. Otherwise it goes back to
    ``pending`` and the claim back to ``dead``: should the lost message surface after all, it
    finds a dead claim and does nothing, so replaying again is safe. Without a claim nothing
    proves the message was not sent, so ``force`` is required. Returns what was done.
    """
    using = router.db_for_write(DeadLetter)
    with transaction.atomic(using=using):
        dead_letter = (
            DeadLetter.objects.using(using).select_for_update().filter(pk=dead_letter_id).first()
        )
        if dead_letter is None:
            raise RecoverError(f"no dead letter with id {dead_letter_id}")
        if dead_letter.status != DeadLetterStatus.REPLAYING:
            raise RecoverError(
                f"dead letter {dead_letter_id} is {dead_letter.status}, not replaying: "
                "nothing to do"
            )
        task_id = dead_letter.replayed_task_id
        if dead_letter.entity and dead_letter.operation:
            if _replay_ran(dead_letter, task_id):
                dead_letter.status = DeadLetterStatus.REPLAYED
                dead_letter.replayed_at = dead_letter.replayed_at or timezone.now()
                dead_letter.save(using=using, update_fields=["status", "replayed_at"])
                return f"dead letter {dead_letter_id}: its replay {task_id} ran; marked replayed"
        elif not force:
            raise RecoverError(
                f"dead letter {dead_letter_id} has no claim to tell whether replay {task_id} was "
                "sent; check the broker and worker logs for that id, then use --force to set it "
                "back to pending"
            )
        _undo(dead_letter, task_id, using, keep_task_id=True)
    return f"dead letter {dead_letter_id}: replay {task_id} never ran; pending again"


class RecoverError(Exception):
    """A dead letter cannot be recovered as asked (unknown, not replaying, or needs --force)."""


def _replay_ran(dead_letter: DeadLetter, task_id: str) -> bool:
    claim = (
        TaskClaim.objects.using(claims.write_alias())
        .filter(entity=dead_letter.entity, operation=dead_letter.operation)
        .first()
    )
    if claim is None:
        return False
    if claim.owner_task_id != task_id:
        return claim.status == ClaimStatus.SUCCEEDED  # someone else finished the work meanwhile
    # reopen() left it "retrying" with 0 attempts; any acquisition by the replay bumps that.
    return claim.attempts > 0 or claim.status != ClaimStatus.RETRYING


def discard(ids: Iterable[int]) -> list[int]:
    """Mark the pending ones among ``ids`` discarded; returns the ids that changed.

    The status guard keeps a row someone replayed in the meantime as replayed.
    """
    using = router.db_for_write(DeadLetter)
    with transaction.atomic(using=using):
        changed = list(
            DeadLetter.objects.using(using)
            .select_for_update()
            .filter(pk__in=list(ids), status=DeadLetterStatus.PENDING)
            .order_by()
            .values_list("pk", flat=True)
        )
        DeadLetter.objects.using(using).filter(pk__in=changed).update(
            status=DeadLetterStatus.DISCARDED
        )
    return changed


# -- what became of a replay ---------------------------------------------------------------------


class ReplayState(enum.Enum):
    NONE = "none"  # never replayed
    SUCCEEDED = "succeeded"
    FAILED_AGAIN = "failed_again"
    RUNNING = "running"
    NEVER_RAN = "never_ran"
    UNKNOWN = "unknown"


@dataclass
class ReplayOutcome:
    state: ReplayState
    text: str
    dead_letter: DeadLetter | None = None  # the new dead letter, when it failed again


def replay_outcome(dead_letter: DeadLetter, app: Celery | None = None) -> ReplayOutcome:
    """What became of this dead letter's latest replay, from what is already stored.

    A later dead letter for the replay's task id means it failed again; an idempotent task's
    claim tells succeeded/running; else Celery's result backend, if one is configured; else the
    message was sent and nothing more is known. "replayed" alone only means "sent".
    """
    task_id = dead_letter.replayed_task_id
    if not task_id:
        return ReplayOutcome(ReplayState.NONE, "never replayed")
    again = (
        DeadLetter.objects.filter(replay_of=dead_letter.pk, task_id=task_id).order_by("-id").first()
    )
    if again is not None:
        return ReplayOutcome(
            ReplayState.FAILED_AGAIN,
            f"failed again: dead letter {again.pk} ({again.exception_type})",
            again,
        )
    if dead_letter.status == DeadLetterStatus.PENDING:
        return ReplayOutcome(
            ReplayState.NEVER_RAN, f"replay {task_id} never ran (recovered); pending again"
        )
    if dead_letter.entity and dead_letter.operation:
        claim = TaskClaim.objects.filter(
            entity=dead_letter.entity, operation=dead_letter.operation
        ).first()
        if claim is not None and claim.owner_task_id == task_id:
            return _from_claim(claim)
        if claim is not None and claim.status == ClaimStatus.SUCCEEDED:
            return ReplayOutcome(
                ReplayState.SUCCEEDED,
                f"the work was done by task {claim.owner_task_id} (the replay was a duplicate)",
            )
    return _from_result_backend(app or celery_app(), task_id)


def _from_claim(claim: TaskClaim) -> ReplayOutcome:
    if claim.status == ClaimStatus.SUCCEEDED:
        when = f" at {format_utc(claim.completed_at)}" if claim.completed_at else ""
        return ReplayOutcome(ReplayState.SUCCEEDED, f"succeeded{when}")
    if claim.status == ClaimStatus.DEAD:
        return ReplayOutcome(ReplayState.FAILED_AGAIN, "failed again (its claim is dead)")
    if claim.status == ClaimStatus.RETRYING and claim.attempts == 0:
        return ReplayOutcome(ReplayState.RUNNING, "sent, not picked up by a worker yet")
    label = "running" if claim.status == ClaimStatus.RUNNING else "failed, retry scheduled"
    return ReplayOutcome(ReplayState.RUNNING, f"{label} (attempt {claim.attempts})")


def _from_result_backend(app: Celery, task_id: str) -> ReplayOutcome:
    unknown = ReplayOutcome(ReplayState.UNKNOWN, "sent; outcome unknown (no claim, no result)")
    backend = app.conf.result_backend
    if not backend or str(backend).startswith("disabled"):
        return unknown
    try:
        state = app.AsyncResult(task_id).state
    except Exception:  # noqa: BLE001 - an unreachable backend must not break the page
        return ReplayOutcome(ReplayState.UNKNOWN, "sent; the result backend did not answer")
    if state == "SUCCESS":
        return ReplayOutcome(ReplayState.SUCCEEDED, "succeeded (result backend)")
    if state == "FAILURE":
        return ReplayOutcome(ReplayState.FAILED_AGAIN, "failed (result backend)")
    if state in ("STARTED", "RETRY", "RECEIVED"):
        return ReplayOutcome(ReplayState.RUNNING, f"{state.lower()} (result backend)")
    # PENDING is also what a backend says for a task that ignores its result.
    return ReplayOutcome(
        ReplayState.UNKNOWN, "sent; no result yet (or the task does not store results)"
    )
