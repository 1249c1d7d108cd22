"""Tasks for the worker main-process tests (tests/test_worker_faults.py): long bodies with short
leases, a singleton, acks-late work for amortized completion."""

from __future__ import annotations

import os
import signal
import time

from celery_hygiene import idempotent_task, singleton_task
from tests.testapp.models import Attempt, SideEffect


@idempotent_task(entity="key", acks_late=True, lease_seconds=4)
def long_body_short_lease(key: str, until_gone: str) -> str:
    """Runs (for many leases) until the test removes the file ``until_gone`` (at most 120 s):
    only the heartbeat keeps the claim its own."""
    Attempt.objects.create(task="long_body_short_lease", key=key)
    deadline = time.monotonic() + 120
    while os.path.exists(until_gone) and time.monotonic() < deadline:
        time.sleep(0.2)
    SideEffect.objects.create(entity=key, kind="long")
    return f"done:{key}"


@singleton_task(acks_late=True, lease_seconds=3)
def beat_singleton(work_seconds: float = 0.0) -> str:
    """The README's beat recipe: never two runs at once; a finished run frees the key."""
    Attempt.objects.create(task="beat_singleton", key="")
    time.sleep(work_seconds)
    return "ran"


@idempotent_task(entity="key", acks_late=True, reject_on_worker_lost=True, lease_seconds=60)
def dies_once(key: str, flag: str) -> str:
    """Kills its own pool process while the flag file exists (once), like an OOM kill; the
    lease (60 s) is far longer than the test waits for the redelivery."""
    Attempt.objects.create(task="dies_once", key=key)
    if os.path.exists(flag):
        os.unlink(flag)
        os.kill(os.getpid(), signal.SIGKILL)
    return f"done:{key}"
