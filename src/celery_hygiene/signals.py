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
"""

from __future__ import annotations

from django.dispatch import Signal

task_duplicate = Signal()
task_claim_mismatch = Signal()
task_retry_scheduled = Signal()
task_dead_lettered = Signal()
task_over_duration = Signal()
task_singleton_busy = Signal()
