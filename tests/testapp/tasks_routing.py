"""Tasks for the per-queue tests. A worker started with HYGIENE_TEST_QUEUES (a JSON declaration)
applies it with ``configure_queues``, as a project's celery.py would."""

from __future__ import annotations

import json
import os
import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from celery_hygiene import RetryPolicy, hygienic_task
from celery_hygiene.task.routing import configure_queues

ONE_SHOT = RetryPolicy(max_attempts=1)


@shared_task(name="routing.block")
def block(seconds: float) -> str:
    time.sleep(seconds)
    return "blocked"


@shared_task(name="routing.quick")
def quick() -> float:
    return time.time()


@shared_task(name="routing.pinned", queue="pinned-by-option")
def pinned() -> str:
    return "pinned"


@hygienic_task(name="routing.overrun", retry=ONE_SHOT)
def overrun(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@hygienic_task(name="routing.stubborn", retry=ONE_SHOT)
def stubborn(seconds: float) -> str:
    """Swallows the soft limit and keeps going: only the hard limit stops it."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        time.sleep(seconds)
    return "finished"


_declaration = os.environ.get("HYGIENE_TEST_QUEUES")
if _declaration:
    from tests.celery_app import app

    configure_queues(app, json.loads(_declaration))
