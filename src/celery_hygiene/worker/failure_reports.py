"""Failures that Celery reports in the worker's main process, where no task code runs.

A hard time limit kills the pool process; a worker lost without requeue (no ``acks_late``) drops
the message. Celery then reports the failure from the parent (``task_failure``), and our task
wrapper never sees it. This module turns those reports into dead letters too.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from billiard.exceptions import WorkerLostError
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure

from celery_hygiene.events import log_event
from celery_hygiene.worker import amortized

# Celery can report one hard timeout twice (from on_timeout, then from the pool's result
# callback); remember recent ids so it becomes one dead letter.
_RECENT_LIMIT = 10_000
_recent: OrderedDict[str, None] = OrderedDict()


def _first_report(task_id: str) -> bool:
    if task_id in _recent:
        return False
    _recent[task_id] = None
    if len(_recent) > _RECENT_LIMIT:
        _recent.popitem(last=False)
    return True


def on_task_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    from celery_hygiene.task.hygiene_task import HygieneTask

    if not isinstance(sender, HygieneTask) or task_id is None:
        return
    if not isinstance(exception, TimeLimitExceeded | WorkerLostError):
        return
    if not _first_report(task_id):
        return
    try:
        # A body that handed its completion to this process and then died did finish: record
        # it first, so what follows finds the claim succeeded (AMORTIZED_COMPLETION).
        amortized.flush()
        if sender.acks_late and (
            # Celery requeues these itself; the redelivery is counted against the cap instead,
            # and may take the claim over at once: its body is dead, nobody holds the lease.
            # (Celery sends no task_failure when it requeues a lost worker's message: that case
            # is handled by amortized.HygieneRequest.on_failure; a hard time limit lands here.)
            (isinstance(exception, WorkerLostError) and sender.reject_on_worker_lost)
            or (isinstance(exception, TimeLimitExceeded) and not sender.acks_on_failure_or_timeout)
        ):
            sender.release_lost_lease(task_id, args, kwargs, _hostname(sender))
            return
        sender.dead_letter_from_parent(task_id, exception, args, kwargs)
    except Exception as error:  # never raise into the worker's main loop
        log_event(
            logging.ERROR,
            "deadletter_parent_failed",
            task=sender.name,
            id=task_id,
            error=repr(error),
        )


def _hostname(task: Any) -> str:
    """This worker's node name, as the pool processes write it into ``owner_worker``."""
    import socket

    from celery_hygiene.worker import upkeep

    return upkeep.hostname() or getattr(task.request, "hostname", None) or socket.gethostname()


def connect() -> None:
    task_failure.connect(on_task_failure, weak=False, dispatch_uid="celery_hygiene.worker_failures")
