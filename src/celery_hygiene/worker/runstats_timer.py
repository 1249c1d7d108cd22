"""Write run statistics on a timer, so the report shows an idle worker's runs.

``runstats`` flushes from ``task_postrun`` (after a body, at most every
``RUN_STATS_FLUSH_SECONDS``) and when a process exits. A worker that ran a burst of tasks and then
went idle would keep that burst in memory until its next task or its shutdown. So every process
that runs tasks also gets a daemon thread that flushes once the interval has passed: each prefork
pool process from ``worker_process_init``, and the worker's main process from ``worker_ready``
(where the solo and threads pools run their tasks). The thread uses its own database connection
and closes it after each flush.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import signals as celery_signals

from celery_hygiene import conf
from celery_hygiene.events import log_event
from celery_hygiene.worker import runstats

# How often the thread looks, as a fraction of the flush interval (and within these bounds).
_MIN_TICK = 0.2
_MAX_TICK = 30.0

_timer: _FlushTimer | None = None


class _FlushTimer:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name="celery-hygiene-runstats", daemon=True
        )

    def _run(self) -> None:
        while not self.stop.wait(_tick()):
            flush_if_due()


def _tick() -> float:
    interval = float(conf.get("RUN_STATS_FLUSH_SECONDS"))
    return min(_MAX_TICK, max(_MIN_TICK, interval / 2))


def flush_if_due() -> None:
    from django.db import connections

    try:
        recorder = runstats.recorder()
        if recorder.flush_due():
            recorder.flush()
    except Exception as exc:  # noqa: BLE001 - statistics must never take a worker down
        log_event(logging.WARNING, "run_stats_flush_failed", error=repr(exc))
    finally:
        connections.close_all()  # this thread's connections only


def start(**kwargs: Any) -> None:
    """Start this process's timer (once per process: a forked child starts its own)."""
    global _timer
    if _timer is not None and _timer.pid == os.getpid() and _timer.thread.is_alive():
        return
    _timer = _FlushTimer()
    _timer.thread.start()


def stop(**kwargs: Any) -> None:
    if _timer is not None and _timer.pid == os.getpid():
        _timer.stop.set()


def connect() -> None:
    celery_signals.worker_process_init.connect(
        start, weak=False, dispatch_uid="hygiene_runstats_timer_child"
    )
    celery_signals.worker_ready.connect(start, weak=False, dispatch_uid="hygiene_runstats_timer")
    celery_signals.worker_process_shutdown.connect(
        stop, weak=False, dispatch_uid="hygiene_runstats_timer_child_stop"
    )
    celery_signals.worker_shutdown.connect(
        stop, weak=False, dispatch_uid="hygiene_runstats_timer_stop"
    )
