"""Tasks for the duration watchdog tests: a threshold of 1 s comes from ``expected_duration``."""

from __future__ import annotations

import time

from celery import shared_task
from django.dispatch import receiver

from celery_hygiene import hygienic_task
from celery_hygiene.signals import task_over_duration
from tests.testapp.models import SideEffect


@shared_task(name="watchdog.sleepy", expected_duration=1)
def sleepy(seconds: float) -> float:
    """A plain Celery task: the watchdog watches every task, not only the hygiene ones."""
    time.sleep(seconds)
    return seconds


@hygienic_task(name="watchdog.hygienic_sleepy", expected_duration=1)
def hygienic_sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@shared_task(name="watchdog.default_threshold")
def default_threshold(seconds: float) -> float:
    """No expected_duration: the 60 s settings default applies, so a 2 s run is never flagged."""
    time.sleep(seconds)
    return seconds


@shared_task(name="watchdog.gil_hog", expected_duration=1)
def gil_hog(seconds: float) -> int:
    """Busy in pure Python, never sleeping: the worst case for a watcher inside the process."""
    deadline = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return spins


@receiver(task_over_duration, dispatch_uid="tests.watchdog.over_duration")
def _remember_signal(sender: object, task_id: str, task_name: str, **kwargs: object) -> None:
    """Receivers run in the worker's main process; leave a row the test can see."""
    SideEffect.objects.create(
        entity=task_id,
        kind="over_duration",
        payload={
            "task_name": task_name,
            "threshold": kwargs["threshold"],
            "worker": kwargs["worker"],
        },
    )
