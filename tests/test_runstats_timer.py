"""An idle worker's runs reach the statistics without another task or a shutdown (issue 11)."""

from __future__ import annotations

import pytest

from celery_hygiene.models import TaskRunStats
from tests.conftest import wait_until
from tests.testapp import tasks_watchdog as t

pytestmark = pytest.mark.worker

FAST_FLUSH = {"DJANGO_SETTINGS_MODULE": "tests.settings_fastflush"}


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_runs_of_an_idle_worker_are_flushed_on_a_timer(worker_factory, queue_name, pool):
    worker = worker_factory(queue_name, concurrency=1, pool=pool, env=FAST_FLUSH)
    assert t.sleepy.apply_async((0.01,), queue=queue_name).get(timeout=30) == 0.01
    # Nothing else runs and the worker keeps running: only the timer can write this row.
    row = wait_until(
        lambda: TaskRunStats.objects.filter(task_name="watchdog.sleepy").first(), timeout=15
    )
    assert row.runs == 1
    assert worker.process is not None and worker.process.poll() is None
