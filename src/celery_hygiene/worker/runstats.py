"""Run durations per task name, for ``manage.py taskhygiene report``.

Measured in the process that runs the task: it is the only one that sees a run's exact start and
end through Celery's public signals (``task_prerun``/``task_postrun``); the worker's main process
learns about the end only inside ``Request`` callbacks that have no hook.

Kept in memory and written rarely: a database write per run would cost a short task more than
its own body. Each process keeps, per task name and hour, a run count, a total, a maximum and a
log-scale histogram, and rewrites its own ``TaskRunStats`` rows at most every
``RUN_STATS_FLUSH_SECONDS`` (from ``task_postrun``, after the body) and once more when the process
exits. A process killed with SIGKILL loses at most that interval of statistics.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from django.db.models.functions import Now
from django.utils import timezone

from celery_hygiene import conf
from celery_hygiene.events import log_event

# Bucket i holds durations in (FLOOR * BASE**(i-1), FLOOR * BASE**i]: a 10 % wide bucket reads
# back within 5 % of the true value, and a day-long run needs fewer than 200 buckets.
BUCKET_BASE = 1.1
BUCKET_FLOOR = 0.001


def bucket_of(seconds: float) -> int:
    if seconds <= BUCKET_FLOOR:
        return 0
    return math.ceil(math.log(seconds / BUCKET_FLOOR, BUCKET_BASE))


def bucket_value(index: int) -> float:
    """The geometric middle of a bucket: what a percentile in that bucket reads back as."""
    if index <= 0:
        return BUCKET_FLOOR
    return BUCKET_FLOOR * math.pow(BUCKET_BASE, index - 0.5)


def percentile(histogram: Counter[int], fraction: float) -> float | None:
    """The value below which ``fraction`` of the runs fall, from a bucket histogram."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(max(histogram))  # pragma: no cover - rank <= total always stops above


@dataclass
class Window:
    """One task name's runs during one hour, in this process."""

    runs: int = 0
    total: float = 0.0
    maximum: float = 0.0
    histogram: Counter[int] = field(default_factory=Counter)
    dirty: bool = False

    def add(self, seconds: float) -> None:
        self.runs += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)
        self.histogram[bucket_of(seconds)] += 1
        self.dirty = True


def _hour(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


class Recorder:
    """Per-process aggregate. Thread-safe, because the threads pool finishes tasks concurrently."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._starts: dict[tuple[str, int], float] = {}
        self._windows: dict[tuple[str, str, dt.datetime], Window] = {}
        self._last_flush = time.monotonic()

    def started(self, task_id: str) -> None:
        self._starts[(task_id, threading.get_ident())] = time.perf_counter()

    def finished(self, task_id: str, task_name: str, hostname: str) -> float | None:
        """Add the run to this hour's window; its duration, or None if its start was missed."""
        start = self._starts.pop((task_id, threading.get_ident()), None)
        if start is None:
            return None
        seconds = time.perf_counter() - start
        key = (task_name, f"{hostname}:{self.pid}", _hour(timezone.now()))
        with self._lock:
            self._windows.setdefault(key, Window()).add(seconds)
        return seconds

    def flush_due(self) -> bool:
        interval = float(conf.get("RUN_STATS_FLUSH_SECONDS"))
        return time.monotonic() - self._last_flush >= interval

    def flush(self) -> None:
        """Write every changed window; keep a window dirty if its write failed, to retry later."""
        self._last_flush = time.monotonic()
        with self._lock:
            pending = [(key, _copy(w)) for key, w in self._windows.items() if w.dirty]
        for key, snapshot in pending:
            try:
                _write(key, snapshot)
            except Exception as exc:  # noqa: BLE001 - statistics must never break a task
                log_event(logging.WARNING, "run_stats_flush_failed", task=key[0], error=repr(exc))
                continue
            with self._lock:
                current = self._windows.get(key)
                # Runs added while we were writing keep the window dirty for the next flush.
                if current is not None and current.runs == snapshot.runs:
                    current.dirty = False
        self._forget_old_windows()

    def _forget_old_windows(self) -> None:
        this_hour = _hour(timezone.now())
        with self._lock:
            for key in [k for k, w in self._windows.items() if k[2] < this_hour and not w.dirty]:
                del self._windows[key]


def _copy(window: Window) -> Window:
    return Window(window.runs, window.total, window.maximum, Counter(window.histogram), True)


def _write(key: tuple[str, str, dt.datetime], window: Window) -> None:
    # Only this process writes rows with its worker name, so update-then-insert cannot race.
    from celery_hygiene.models import TaskRunStats

    task_name, worker, window_start = key
    values = {
        "runs": window.runs,
        "total_seconds": window.total,
        "max_seconds": window.maximum,
        "histogram": {str(index): count for index, count in window.histogram.items()},
    }
    rows = TaskRunStats.objects.filter(
        task_name=task_name, worker=worker, window_start=window_start
    ).update(updated_at=Now(), **values)
    if not rows:
        TaskRunStats.objects.create(
            task_name=task_name, worker=worker, window_start=window_start, **values
        )


_recorder: Recorder | None = None


def recorder() -> Recorder:
    """This process's recorder; a forked pool child starts with an empty one of its own."""
    global _recorder
    if _recorder is None or _recorder.pid != os.getpid():
        _recorder = Recorder()
    return _recorder
