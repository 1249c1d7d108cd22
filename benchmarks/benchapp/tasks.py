"""The benchmark's tasks: two bodies, five ways to run them.

- micro: what a very short task does: one write to the database and a couple of milliseconds of
  waiting on I/O (``BENCH_WORK_MS``, 2 ms).
- realistic: what most real tasks look like: five small queries (one INSERT, four primary-key
  reads) and 20 ms of I/O (``BENCH_REAL_WORK_MS``), e.g. a call to another service.

The driver picks the body per run through the key it sends: keys of realistic runs start with
``r``. The body records how long it took, so the worker-side hooks in ``benchproject.celery``
can split each task's time into body and everything around it.
"""

from __future__ import annotations

import os
import time

from benchproject.celery import app

from benchapp.models import Effect
from celery_hygiene import idempotent_task

WORK_SECONDS = float(os.environ.get("BENCH_WORK_MS", "2")) / 1000.0
REAL_WORK_SECONDS = float(os.environ.get("BENCH_REAL_WORK_MS", "20")) / 1000.0
# perf_counter seconds the last body took in this process; read and reset by task_postrun.
body_seconds = 0.0


def _body(key: str) -> str:
    global body_seconds
    started = time.perf_counter()
    effect = Effect.objects.create(key=key)
    if key.startswith("r"):
        for _ in range(4):
            Effect.objects.filter(pk=effect.pk).values_list("key", flat=True).first()
        time.sleep(REAL_WORK_SECONDS)
    else:
        time.sleep(WORK_SECONDS)
    body_seconds = time.perf_counter() - started
    return key


@app.task(name="bench.plain")
def plain(key: str) -> str:
    return _body(key)


@idempotent_task(entity="key", app=app, name="bench.idempotent")
def idempotent(key: str) -> str:
    return _body(key)


@idempotent_task(entity="key", atomic=True, app=app, name="bench.idempotent_atomic")
def idempotent_atomic(key: str) -> str:
    return _body(key)


# For the in-process floor phase: the decorator around an empty body.
@idempotent_task(entity="key", app=app, name="bench.idempotent_noop")
def idempotent_noop(key: str) -> str:
    return key


try:  # the Redis-lock peer is installed in the benchmark's own environment only
    from celery_once import QueueOnce
except ImportError:  # pragma: no cover - the driver reports the variant as skipped
    QueueOnce = None
    once = None
else:

    @app.task(base=QueueOnce, once={"graceful": True, "keys": ["key"]}, name="bench.once")
    def once(key: str) -> str:
        return _body(key)
