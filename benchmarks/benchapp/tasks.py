"""The benchmark's tasks: one body, five ways to run it.

The body is what a short real task does: one write to the database and a couple of milliseconds
of waiting on I/O. It records how long it took, so the worker-side hooks in
``benchproject.celery`` can split each task's time into body and everything around it.
"""

from __future__ import annotations

import os
import time

from benchproject.celery import app

from benchapp.models import Effect
from celery_hygiene import idempotent_task

WORK_SECONDS = float(os.environ.get("BENCH_WORK_MS", "2")) / 1000.0
# perf_counter seconds the last body took in this process; read and reset by task_postrun.
body_seconds = 0.0


def _body(key: str) -> str:
    global body_seconds
    started = time.perf_counter()
    Effect.objects.create(key=key)
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


try:  # the Redis-lock peer is installed in the benchmark's own environment only
    from celery_once import QueueOnce
except ImportError:  # pragma: no cover - the driver reports the variant as skipped
    QueueOnce = None
    once = None
else:

    @app.task(base=QueueOnce, once={"graceful": True, "keys": ["key"]}, name="bench.once")
    def once(key: str) -> str:
        return _body(key)
