"""After a replay: settle one whose publisher died (``recover``), set rows aside (``discard``),
and tell what became of it (``replay_outcome``, read-only, from what is already stored)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Celery
from django.db import router, transaction
from django.utils import timezone

from celery_hygiene.claims import state as claims
from celery_hygiene.failures.deadletters import format_utc
from celery_hygiene.failures.replay_app import celery_app
from celery_hygiene.models import ClaimStatus, DeadLetter, DeadLetterStatus, TaskClaim


def back_to_pending(
    dead_letter: DeadLetter, task_id: str, using: str, *, keep_task_id: bool = False
) -> None:
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
        back_to_pending(dead_letter, task_id, using, keep_task_id=True)
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
