"""Audit rules on the tasks themselves: retries, acknowledgements, dead letters (W010-W013)."""

from __future__ import annotations

from typing import Any

from django.core import checks

from celery_hygiene.ops.audit.scope import (
    Messages,
    Scope,
    is_hygienic,
    is_idempotent,
    some_names,
)

# -- tasks -------------------------------------------------------------------------------------


def keeps_celery_retries(task: Any) -> bool:
    """A HygieneTask that chose no policy (``task_cls``, ``base=``): Celery's own retries."""
    return is_hygienic(task) and getattr(task, "hygiene_retry", None) is None


def check_retry_forever(scope: Scope) -> Messages:
    # A hygiene policy's max_attempts is a required, bounded number; a task that keeps Celery's
    # retries (task_cls) is held to the default policy's cap at run time, which the team should
    # know before deploying, not find in the dead letters.
    messages: Messages = []
    for task in scope.tasks:
        if task.max_retries is not None:
            continue
        if not is_hygienic(task):
            messages.append(
                checks.Warning(
                    f"Task {task.name!r} has max_retries=None: once it starts retrying, it never "
                    "stops.",
                    hint="Set max_retries (e.g. max_retries=5), or use @hygienic_task(retry="
                    "RetryPolicy(max_attempts=5)) so the last failure becomes a dead letter "
                    "instead of a loop.",
                    obj=task.name,
                    id="celery_hygiene.W010",
                )
            )
        elif keeps_celery_retries(task):
            attempts = task.celery_retries().policy.max_attempts
            messages.append(
                checks.Warning(
                    f"Task {task.name!r} has max_retries=None: plain Celery retries it forever; "
                    f"with hygiene it stops after {attempts} attempts and becomes a dead letter.",
                    hint="Set the cap you mean on the task (e.g. max_retries=10), or choose a "
                    "policy: @app.task(hygiene_retry=RetryPolicy(max_attempts=..., ...)). The "
                    "cap used meanwhile is CELERY_HYGIENE['DEFAULT_RETRY_POLICY']'s max_attempts.",
                    obj=task.name,
                    id="celery_hygiene.W010",
                )
            )
    return messages


def check_acks_late(scope: Scope) -> Messages:
    messages: Messages = []
    for task in scope.tasks:
        late, reject = bool(task.acks_late), bool(task.reject_on_worker_lost)
        if late and not is_idempotent(task):
            messages.append(_acks_late_not_idempotent(task, reject))
        elif is_idempotent(task) and not (late and reject):
            messages.append(_idempotent_acks_early(task, late))
    return messages


def _acks_late_not_idempotent(task: Any, reject: bool) -> checks.CheckMessage:
    lost = (
        "a killed pool process requeues it too"
        if reject
        else "a killed pool process still loses it (no reject_on_worker_lost)"
    )
    return checks.Warning(
        f"Task {task.name!r} acknowledges late (acks_late=True) but is not idempotent: a message "
        f"redelivered after a lost connection or worker restart runs its side effects twice; "
        f"{lost}.",
        hint="Make it idempotent with @idempotent_task(entity=...), so a redelivery is "
        "harmless, or set acks_late=False if losing a run is better than running it twice.",
        obj=task.name,
        id="celery_hygiene.W011",
    )


def _idempotent_acks_early(task: Any, late: bool) -> checks.CheckMessage:
    missing = "reject_on_worker_lost=False" if late else "acks_late=False"
    spec = getattr(task, "hygiene_idempotency", None)
    if getattr(spec, "singleton", False):
        what = "is a singleton task (one run at a time)"
        safe = "the claim keeps a redelivered copy from running next to a live run"
    else:
        what = "is idempotent"
        safe = "running it again would be safe"
    return checks.Warning(
        f"Task {task.name!r} {what} but a worker crash loses it ({missing}), although {safe}.",
        hint="Set acks_late=True and reject_on_worker_lost=True on the task (or "
        "CELERY_TASK_ACKS_LATE / CELERY_TASK_REJECT_ON_WORKER_LOST).",
        obj=task.name,
        id="celery_hygiene.W012",
    )


def check_dead_letter_destination(scope: Scope) -> Messages:
    """Tasks whose last failure leaves nothing behind: a FAILURE state in a result backend, if any.

    One message for all of them: a codebase adopting the library has dozens.
    """
    traceless = [task.name for task in scope.tasks if not is_hygienic(task)]
    if not traceless:
        return []
    return [
        checks.Warning(
            f"{len(traceless)} task(s) can fail without leaving a dead letter (they are not "
            f"HygieneTask tasks): {some_names(traceless)}.",
            hint="Make hygiene the default for every task of the app: Celery(..., task_cls="
            "'proj.tasks_base:ProjectTask') with class ProjectTask(HygieneTask) (see "
            "docs/retries-and-dead-letters.md), or decorate them with @hygienic_task.",
            obj=traceless[0],
            id="celery_hygiene.W013",
        )
    ]
