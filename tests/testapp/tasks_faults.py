"""Tasks for the claims-under-faults tests: long bodies, poison messages, publish failures."""

from __future__ import annotations

import os
import time

from celery_hygiene import RetryPolicy, hygienic_task, idempotent_task
from tests.testapp.models import Attempt, SideEffect

QUICK = RetryPolicy(max_attempts=3, min_delay=0.5, max_delay=0.5)


@idempotent_task(entity="key", acks_late=True, lease_seconds=3, retry=QUICK)
def outlives_its_lease(key: str, work_seconds: float) -> str:
    """Runs three times longer than its lease: only the heartbeat keeps the claim its own."""
    Attempt.objects.create(task="outlives_its_lease", key=key)
    time.sleep(work_seconds)
    SideEffect.objects.create(entity=key, kind="long")
    return f"done:{key}"


@idempotent_task(
    entity="key",
    atomic=True,
    acks_late=True,
    reject_on_worker_lost=True,
    retry=RetryPolicy(max_attempts=3, min_delay=0.2, max_delay=0.2),
)
def atomic_poison(key: str) -> None:
    """Kills its pool process every time, like a segfault or the OOM killer would."""
    Attempt.objects.using("attempts").create(task="atomic_poison", key=key)
    os._exit(1)


@idempotent_task(entity="key", acks_late=True, retry=QUICK)
def fails_once_then_succeeds(key: str) -> str:
    Attempt.objects.create(task="fails_once_then_succeeds", key=key)
    if Attempt.objects.filter(task="fails_once_then_succeeds", key=key).count() == 1:
        raise ConnectionError("first try fails")
    SideEffect.objects.create(entity=key, kind="second-try")
    return f"done:{key}"


@idempotent_task(entity="key", acks_late=True, bind=True, retry=QUICK)
def hands_over(self, key: str) -> None:  # noqa: ANN001 - Celery's bound task
    """Replaces itself with another task: the claim must record that the body ran."""
    Attempt.objects.create(task="hands_over", key=key)
    queue = (self.request.delivery_info or {}).get("routing_key")  # the test's own queue
    raise self.replace(record_handover.si(key).set(queue=queue))


@idempotent_task(entity="key", acks_late=True, retry=QUICK)
def record_handover(key: str) -> str:
    SideEffect.objects.create(entity=key, kind="handover")
    return f"handed:{key}"


@idempotent_task(entity="key", acks_late=True, retry=QUICK)
def outage_before_completion(key: str, outage_seconds: float) -> str:
    """The database goes away right after the body's effect, for longer than a few seconds."""
    import subprocess
    import sys

    from django.db import connection

    SideEffect.objects.create(entity=key, kind="before-outage")
    name = connection.settings_dict["NAME"]
    script = (
        "import sys, time, psycopg\n"
        "def run(sql, *a):\n"
        "    with psycopg.connect(host='127.0.0.1', user='postgres', dbname='postgres',"
        " autocommit=True) as pg:\n"
        "        pg.execute(sql, a)\n"
        f"run('ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false')\n"
        f"run('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s',"
        f" '{name}')\n"
        "print('down', flush=True)\n"
        f"time.sleep({outage_seconds})\n"
        f"run('ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true')\n"
    )
    helper = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert helper.stdout is not None
    helper.stdout.readline()  # the database is down now; the body returns into the outage
    return f"done:{key}"


@idempotent_task(entity="key", acks_late=True, bind=True, retry=QUICK)
def retries_itself(self, key: str) -> str:  # noqa: ANN001 - Celery's bound task
    """Asks for its own retry (``raise self.retry()``) on its first run, once the test says so
    (a ``go`` row): by then the test has filled the queue so that the broker refuses it."""
    Attempt.objects.create(task="retries_itself", key=key)
    if Attempt.objects.filter(task="retries_itself", key=key).count() == 1:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if SideEffect.objects.filter(entity=key, kind="go").exists():
                break
            time.sleep(0.1)
        raise self.retry(countdown=0.2)
    SideEffect.objects.create(
        entity=key, kind="second-run", payload={"headers": dict(self.request.headers or {})}
    )
    return f"done:{key}"


@hygienic_task(acks_late=True, retry=RetryPolicy(max_attempts=3, min_delay=2, max_delay=2))
def fails_twice_behind_a_blocker(key: str, queue: str) -> str:
    """Fails on its first two runs; each time it first sends a blocker, so that its retry waits
    (prefetched, not started) behind it on a one-process worker the test then kills."""
    Attempt.objects.create(task="fails_twice_behind_a_blocker", key=key)
    runs = Attempt.objects.filter(task="fails_twice_behind_a_blocker", key=key).count()
    if runs < 3:
        blocker.apply_async((key, runs), queue=queue)
        raise ConnectionError(f"planned failure {runs}")
    return f"done:{key}"


@hygienic_task(acks_late=False)
def blocker(key: str, run: int) -> None:
    """Keeps the worker's only process busy (acknowledged early: a killed worker loses it)."""
    SideEffect.objects.create(entity=key, kind=f"blocker-{run}")
    time.sleep(300)


@hygienic_task(acks_late=True)
def counts_its_runs(key: str) -> str:
    """No claim: every run of the body is recorded."""
    Attempt.objects.create(task="counts_its_runs", key=key)
    return f"ran:{key}"
