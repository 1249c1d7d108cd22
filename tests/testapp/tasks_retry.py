"""Tasks for the retry-policy and dead-letter tests (issue 3)."""

from __future__ import annotations

import os
import signal
import time

from django.dispatch import receiver

from celery_hygiene import RetryPolicy, hygienic_task, idempotent_task
from celery_hygiene.signals import task_dead_lettered, task_retry_scheduled
from tests.testapp.models import Attempt, SideEffect

QUICK = dict(min_delay=0.2, max_delay=0.4)


def _attempt(task: str, key: str) -> int:
    Attempt.objects.create(task=task, key=key)
    return Attempt.objects.filter(task=task, key=key).count()


@hygienic_task(retry=RetryPolicy(max_attempts=4, retry_on=(TimeoutError,), **QUICK), acks_late=True)
def always_times_out(key: str, payload: dict | None = None) -> None:
    _attempt("always_times_out", key)
    raise TimeoutError(f"upstream timed out for {key}")


@idempotent_task(
    entity="order_id",
    operation="charge-retry",
    acks_late=True,
    retry=RetryPolicy(
        max_attempts=3, retry_on=(ConnectionError,), give_up_on=(ValueError,), **QUICK
    ),
)
def charge_with_policy(order_id: int, mode: str) -> str:
    attempt = _attempt("charge_with_policy", str(order_id))
    if mode == "always":
        raise ConnectionError("gateway unreachable")
    if mode == "invalid":
        raise ValueError("card number is invalid")
    if mode == "flaky" and attempt <= 2:
        raise ConnectionError("gateway hiccup")
    SideEffect.objects.create(entity=str(order_id), kind="charge-retry")
    return f"charged:{order_id}"


@hygienic_task(retry=RetryPolicy(max_attempts=2, retry_on=(KeyError,), **QUICK), acks_late=True)
def not_retryable(key: str) -> None:
    _attempt("not_retryable", key)
    raise RuntimeError("not in retry_on, so this is final")


@hygienic_task(retry=RetryPolicy(max_attempts=3, **QUICK), acks_late=True, serializer="pickle")
def odd_payload(key: str, blob: object = None, **details: object) -> None:
    raise ValueError("payload test")


@hygienic_task(retry=RetryPolicy(max_attempts=1, **QUICK), acks_late=True)
def huge_payload(key: str, blob: str, **details: object) -> None:
    raise ValueError("payload test")


@hygienic_task(retry=RetryPolicy(max_attempts=1, **QUICK), acks_late=True)
def fails_while_db_is_down(key: str, **details: object) -> None:
    raise ValueError("final failure while the database is unavailable")


@hygienic_task(
    retry=RetryPolicy(max_attempts=3, **QUICK), acks_late=True, reject_on_worker_lost=True
)
def kills_its_worker_plain(key: str) -> None:
    _attempt("kills_its_worker_plain", key)
    os.kill(os.getpid(), signal.SIGKILL)  # as an OOM kill or a segfault would


@idempotent_task(
    entity="key",
    lease_seconds=3,
    acks_late=True,
    reject_on_worker_lost=True,
    retry=RetryPolicy(max_attempts=3, **QUICK),
)
def kills_its_worker_idempotent(key: str) -> None:
    _attempt("kills_its_worker_idempotent", key)
    os.kill(os.getpid(), signal.SIGKILL)


@idempotent_task(entity="key", time_limit=1, retry=RetryPolicy(max_attempts=3, **QUICK))
def exceeds_hard_limit(key: str) -> None:
    _attempt("exceeds_hard_limit", key)
    time.sleep(10)


@hygienic_task(soft_time_limit=0.5, retry=RetryPolicy(max_attempts=2, **QUICK), acks_late=True)
def exceeds_soft_limit(key: str) -> None:
    _attempt("exceeds_soft_limit", key)
    time.sleep(5)


@hygienic_task(
    retry=RetryPolicy(max_attempts=10, min_delay=0.3, max_delay=0.3, max_elapsed=1.0),
    acks_late=True,
)
def deadline_bound(key: str) -> None:
    _attempt("deadline_bound", key)
    time.sleep(0.2)
    raise ConnectionError("still down")


@receiver(task_retry_scheduled)
def _record_retry(sender, task_id, attempt, countdown, exception, **kwargs):  # noqa: ANN001
    SideEffect.objects.create(
        entity=task_id, kind="signal:retry", payload={"attempt": attempt, "countdown": countdown}
    )


@receiver(task_dead_lettered)
def _record_dead_letter(sender, task_id, dead_letter, exception, **kwargs):  # noqa: ANN001
    SideEffect.objects.create(
        entity=task_id, kind="signal:dead", payload={"dead_letter": dead_letter.pk}
    )


@idempotent_task(
    entity="key",
    acks_late=True,
    # A body policy that would give up at once on a database error: the claim's own budget,
    # not this policy, must carry the message through the outage.
    retry=RetryPolicy(max_attempts=2, retry_on=(TimeoutError,), min_delay=2, max_delay=2),
)
def claim_needs_the_database(key: str) -> str:
    SideEffect.objects.create(entity=key, kind="claim-db")
    return f"claimed:{key}"


@idempotent_task(
    entity="key",
    atomic=True,
    acks_late=True,
    retry=RetryPolicy(max_attempts=2, retry_on=(TimeoutError,), min_delay=2, max_delay=2),
)
def claim_needs_the_database_atomic(key: str) -> str:
    SideEffect.objects.create(entity=key, kind="claim-db")
    return f"claimed:{key}"


@idempotent_task(
    entity="key",
    acks_late=True,
    lease_seconds=3,
    retry=RetryPolicy(max_attempts=3, retry_on=(TimeoutError,), min_delay=2, max_delay=2),
)
def blip_on_retry(key: str, after_seconds: float) -> str:
    """Fails once, ``after_seconds`` after its message first waited out a database outage;
    a helper then cuts the database for 4 s while the retry comes to take its claim."""
    import subprocess
    import sys

    from django.db import connection

    Attempt.objects.create(task="blip_on_retry", key=key)
    if Attempt.objects.filter(task="blip_on_retry", key=key).count() > 1:
        SideEffect.objects.create(entity=key, kind="blip-retry")
        return f"done:{key}"
    name = connection.settings_dict["NAME"]
    script = _BLIP_WHEN_RETRYING.format(name=name, key=key)
    subprocess.Popen([sys.executable, "-c", script])
    time.sleep(after_seconds)
    raise TimeoutError("upstream timed out")


# Run by blip_on_retry in its own process: once the claim is released for the retry, the
# database refuses connections (and drops the open ones) for 4 s.
_BLIP_WHEN_RETRYING = """
import time, psycopg
def run(db, sql, *a):
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=db, autocommit=True) as pg:
        cursor = pg.execute(sql, a)
        return cursor.fetchall() if cursor.description else []
deadline = time.monotonic() + 60
claim = "SELECT 1 FROM celery_hygiene_taskclaim WHERE entity = %s AND status = 'retrying'"
while time.monotonic() < deadline and not run("{name}", claim, "{key}"):
    time.sleep(0.05)
run("postgres", 'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
drop = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
run("postgres", drop, "{name}")
time.sleep(4)
run("postgres", 'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
"""


@idempotent_task(entity="key", acks_late=True, retry=RetryPolicy(max_attempts=2, **QUICK))
def holds_its_key(key: str, seconds: float) -> str:
    """A long body without database work: duplicates wait for it."""
    time.sleep(seconds)
    return f"held:{key}"
