"""Celery signal wiring: the main process's steps (started and stopped in ``worker/upkeep.py``),
the per-run hooks of the watchdog and run statistics, per-queue time limits.

Connected once from ``CeleryHygieneConfig.ready()``, so any worker whose Django project has the
app installed gets them without configuration. Every receiver here is cheap on the hot path
(a dict operation per task); database work happens only for slow runs, on the periodic flush,
and at process exit.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals as celery_signals

from celery_hygiene.events import log_event
from celery_hygiene.task import routing
from celery_hygiene.worker import amortized, runstats, upkeep, watchdog
from celery_hygiene.worker import consumer_step as worker_step


def connect() -> None:
    celery_signals.worker_init.connect(
        _on_worker_init, weak=False, dispatch_uid="hygiene_consumer_step"
    )
    celery_signals.worker_ready.connect(
        _on_worker_ready, weak=False, dispatch_uid="hygiene_wd_ready"
    )
    celery_signals.worker_shutdown.connect(
        _on_worker_shutdown, weak=False, dispatch_uid="hygiene_wd_shutdown"
    )
    celery_signals.worker_process_shutdown.connect(
        _on_process_shutdown, weak=False, dispatch_uid="hygiene_wd_process_shutdown"
    )
    celery_signals.worker_before_create_process.connect(
        _on_before_fork, weak=False, dispatch_uid="hygiene_amortized_fork"
    )
    celery_signals.worker_process_init.connect(
        _on_process_init, weak=False, dispatch_uid="hygiene_amortized_child"
    )
    celery_signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="hygiene_wd_prerun")
    celery_signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="hygiene_wd_postrun")
    celery_signals.task_received.connect(
        _on_task_received, weak=False, dispatch_uid="hygiene_queue_limits"
    )


def _on_worker_init(sender: Any = None, **kwargs: Any) -> None:
    worker_step.install(sender)


def _on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    upkeep.start(sender)  # every main-process step, in one place (worker/upkeep.py)


def _on_worker_shutdown(sender: Any = None, **kwargs: Any) -> None:
    # Normally done already by the consumer step's shutdown (which also sends the held acks).
    if not upkeep.stop():
        upkeep.flush_run_stats()  # solo/threads pools ran their tasks in this process


def _on_before_fork(**kwargs: Any) -> None:
    amortized.prepare()


def _on_process_init(**kwargs: Any) -> None:
    amortized.in_pool_process()


def _on_process_shutdown(**kwargs: Any) -> None:
    upkeep.flush_run_stats()  # a prefork child exiting (warm shutdown, max_tasks_per_child)


def _on_prerun(task_id: str | None = None, **kwargs: Any) -> None:
    if task_id is not None:
        runstats.recorder().started(task_id)


def _on_postrun(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if task_id is None or task is None or task.request.is_eager:
        return
    hostname = task.request.hostname or ""
    recorder = runstats.recorder()
    duration = recorder.finished(task_id, task.name, hostname)
    try:
        # Only a run that lasted past its threshold can have been flagged: one UPDATE, and
        # only for runs that were slow anyway.
        if duration is not None and duration > watchdog.threshold_for(task):
            watchdog.finish(task_id, hostname, duration)
        if recorder.flush_due():
            recorder.flush()
    except Exception as exc:  # noqa: BLE001 - bookkeeping must never fail the task
        log_event(logging.WARNING, "watchdog_postrun_failed", task=task.name, error=repr(exc))


def _on_task_received(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    if request is not None and sender is not None:
        routing.apply_queue_time_limits(sender.app, request)
