"""Signals users can connect to. Each is sent with ``sender`` = the Celery task object.

- ``task_duplicate``: a message found its claim succeeded (or dead) and did not run the body.
  kwargs: task_id, entity, operation, status.
- ``task_claim_mismatch``: same (entity, operation), different arguments. kwargs: task_id, entity,
  operation, existing_fingerprint, fingerprint.
- ``task_retry_scheduled``: kwargs: task_id, attempt, countdown, exception.
- ``task_dead_lettered``: kwargs: task_id, dead_letter (the saved model), exception.
- ``task_singleton_busy``: a singleton's key was held by a run in flight; this message did not
  run (``wait=False``). kwargs: task_id, entity, operation.
- ``task_over_duration``: a run went past its threshold (sent once per run, while it runs, in
  the worker's main process: keep receivers quick). kwargs: task_id, task_name, elapsed,
  threshold, worker.

The ``*Payload`` TypedDicts give those kwargs' types, for a typed receiver (Django also passes
``signal``)::

    @receiver(task_dead_lettered)
    def alert(sender: HygieneTask[..., Any], signal: Signal,
              **payload: Unpack[TaskDeadLetteredPayload]) -> None: ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django.dispatch import Signal

if TYPE_CHECKING:
    from celery_hygiene.models import DeadLetter

task_duplicate = Signal()
task_claim_mismatch = Signal()
task_retry_scheduled = Signal()
task_dead_lettered = Signal()
task_over_duration = Signal()
task_singleton_busy = Signal()


class TaskDuplicatePayload(TypedDict):
    task_id: str
    entity: str
    operation: str
    status: str  # a ClaimStatus value: "succeeded" or "dead"


class TaskClaimMismatchPayload(TypedDict):
    task_id: str
    entity: str
    operation: str
    existing_fingerprint: str
    fingerprint: str


class TaskRetryScheduledPayload(TypedDict):
    task_id: str
    attempt: int  # the attempt that failed (1 for the first run)
    countdown: float  # seconds until the retry
    exception: BaseException


class TaskDeadLetteredPayload(TypedDict):
    task_id: str
    dead_letter: DeadLetter
    exception: BaseException


class TaskSingletonBusyPayload(TypedDict):
    task_id: str
    entity: str
    operation: str


class TaskOverDurationPayload(TypedDict):
    task_id: str
    task_name: str
    elapsed: float  # seconds so far
    threshold: float  # seconds
    worker: str  # the worker's hostname
