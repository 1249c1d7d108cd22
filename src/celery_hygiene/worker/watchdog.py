"""Duration watchdog: flag task runs that go past their expected duration, while they run.

It runs in the worker's main process, never in the task's own process, so a task stuck in C code
or holding the GIL in a pool child is still seen: the main process already tracks every active
request and its start time (``worker/running.py`` reads them). One periodic tick scans
them, so the cost is one pass over at most ``concurrency`` requests per interval, whatever the
task rate, and nothing at all inside a task.

How the tick is driven, per pool:

- prefork, threads (and eventlet/gevent): a repeating entry on the consumer's timer, i.e. the
  main process's event loop. The main thread never runs task code there.
- solo: the main thread *is* the task, so the timer would wait for it. A single daemon thread
  ticks instead. Weaker: a task that holds the GIL (long C call without releasing it) also stalls
  that thread, so such a run is flagged late, when it lets go; the same applies to threads-pool
  tasks, which share the main process's GIL. Only prefork watches from a separate process.

A flagged run produces, once: a ``task_over_duration`` WARNING log line, the
``celery_hygiene.signals.task_over_duration`` signal (sent in the worker's main process: keep
receivers quick), and a ``TaskDurationFlag`` row. It flags; stopping a run is the job of time
limits.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections
from django.utils import timezone

from celery_hygiene import conf, signals
from celery_hygiene.events import log_event
from celery_hygiene.worker.running import started_requests

RunKey = tuple[str, float]  # (task id, time_start): a retry of the same id is another run


def threshold_for(task: Any) -> float:
    """The task's own ``expected_duration`` if it declares one, else the settings default."""
    expected = getattr(task, "expected_duration", None)
    if expected:
        return float(expected)
    return float(conf.get("DURATION_THRESHOLD_SECONDS"))


@dataclass
class Flag:
    task: Any
    task_name: str
    task_id: str
    worker_pid: int | None
    started: float  # epoch seconds
    threshold: float
    elapsed: float
    flagged_at: dt.datetime
    record_id: int | None = None


class Watchdog:
    """Remembers which runs it flagged, so each run is flagged once and closed when it ends."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.flags: dict[RunKey, Flag] = {}

    def safe_tick(self) -> None:
        """The timer's entry point: a failing tick is logged, never raised into the event loop."""
        try:
            self.tick()
        except Exception as exc:  # noqa: BLE001
            log_event(logging.ERROR, "watchdog_tick_failed", worker=self.hostname, error=repr(exc))

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        running: set[RunKey] = set()
        for request in started_requests():
            key = (request.id, request.time_start)
            running.add(key)
            if key not in self.flags:
                self._check(request, key, now)
        touched_db = self._record_pending() | self._close_ended(running, now)
        if touched_db:
            # Respect CONN_MAX_AGE here too: the main process must not hold an idle connection.
            close_old_connections()

    def _check(self, request: Any, key: RunKey, now: float) -> None:
        task = request.task
        threshold = threshold_for(task)
        elapsed = now - request.time_start
        if elapsed <= threshold:
            return
        flag = Flag(
            task=task,
            task_name=request.name,
            task_id=request.id,
            worker_pid=request.worker_pid,
            started=request.time_start,
            threshold=threshold,
            elapsed=elapsed,
            flagged_at=timezone.now(),
        )
        self.flags[key] = flag
        log_event(
            logging.WARNING,
            "task_over_duration",
            task=flag.task_name,
            id=flag.task_id,
            elapsed=round(elapsed, 1),
            threshold=threshold,
            worker=self.hostname,
        )
        _send_signal(flag, self.hostname)

    def _record_pending(self) -> bool:
        """Store flags not stored yet; a failed write (database down) is retried next tick."""
        pending = [flag for flag in self.flags.values() if flag.record_id is None]
        if pending:
            close_old_connections()
        for flag in pending:
            try:
                flag.record_id = _store(flag, self.hostname)
            except Exception as exc:  # noqa: BLE001
                log_event(
                    logging.ERROR,
                    "task_over_duration_not_recorded",
                    task=flag.task_name,
                    id=flag.task_id,
                    error=repr(exc),
                )
        return bool(pending)

    def _close_ended(self, running: set[RunKey], now: float) -> bool:
        """Forget runs that ended; if their process did not write the duration, estimate it.

        The process that ran the task writes the exact duration in ``task_postrun``. That never
        happens when the pool child died or a hard time limit killed it: the end time seen here
        (accurate to one tick) is the best there is.
        """
        ended = [key for key, flag in self.flags.items() if key not in running and flag.record_id]
        for key in ended:
            flag = self.flags.pop(key)
            try:
                finish(flag.task_id, self.hostname, now - flag.started, record_id=flag.record_id)
            except Exception as exc:  # noqa: BLE001
                log_event(logging.ERROR, "watchdog_finish_failed", id=flag.task_id, error=repr(exc))
        return bool(ended)


def _send_signal(flag: Flag, hostname: str) -> None:
    for receiver, response in signals.task_over_duration.send_robust(
        sender=flag.task,
        task_id=flag.task_id,
        task_name=flag.task_name,
        elapsed=flag.elapsed,
        threshold=flag.threshold,
        worker=hostname,
    ):
        if isinstance(response, Exception):
            log_event(
                logging.ERROR,
                "signal_receiver_failed",
                signal="task_over_duration",
                receiver=getattr(receiver, "__qualname__", repr(receiver)),
                error=repr(response),
            )


def _store(flag: Flag, hostname: str) -> int:
    from celery_hygiene.models import TaskDurationFlag

    record = TaskDurationFlag.objects.create(
        task_name=flag.task_name,
        task_id=flag.task_id,
        worker_hostname=hostname,
        worker_pid=flag.worker_pid,
        started_at=dt.datetime.fromtimestamp(flag.started, tz=dt.UTC),
        threshold=flag.threshold,
        flagged_at=flag.flagged_at,
        over_by=flag.elapsed - flag.threshold,
    )
    return int(record.pk)


def finish(task_id: str, hostname: str, duration: float, *, record_id: int | None = None) -> int:
    """Write a flagged run's final duration, unless it is already written. Returns rows changed."""
    from celery_hygiene.models import TaskDurationFlag

    rows = TaskDurationFlag.objects.filter(
        task_id=task_id, worker_hostname=hostname, final_duration__isnull=True
    )
    if record_id is not None:
        rows = rows.filter(pk=record_id)
    return rows.update(final_duration=duration, ended_at=timezone.now())


class _TickThread(threading.Thread):
    """The solo pool's ticker: one daemon thread per worker, not one per task."""

    def __init__(self, watchdog: Watchdog, interval: float) -> None:
        super().__init__(name="celery-hygiene-watchdog", daemon=True)
        self.watchdog = watchdog
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.watchdog.safe_tick()


_thread: _TickThread | None = None


def install(consumer: Any) -> Watchdog | None:
    """Start watching this worker's runs (called once, when the worker is ready)."""
    global _thread
    if not conf.get("WATCHDOG_ENABLED"):
        return None
    watchdog = Watchdog(consumer.hostname)
    interval = float(conf.get("WATCHDOG_INTERVAL_SECONDS"))
    pool = consumer.pool
    if _main_thread_runs_tasks(pool):
        _thread = _TickThread(watchdog, interval)
        _thread.start()
        mode = "thread"
    else:
        consumer.timer.call_repeatedly(interval, watchdog.safe_tick)
        mode = "timer"
    log_event(
        logging.INFO,
        "watchdog_started",
        worker=consumer.hostname,
        mode=mode,
        interval=interval,
        threshold=conf.get("DURATION_THRESHOLD_SECONDS"),
    )
    return watchdog


def uninstall() -> None:
    global _thread
    if _thread is not None:
        _thread.stopped.set()
        _thread = None


def _main_thread_runs_tasks(pool: Any) -> bool:
    from celery.concurrency.solo import TaskPool as SoloPool

    return isinstance(pool, SoloPool)
