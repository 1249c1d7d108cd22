"""Reports: task durations (``taskhygiene report``) and the dead-letter incident summary.

The duration report: per task name, runs, p50 / p95 / max duration and flagged runs.

Read from ``TaskRunStats`` (hourly windows written by the workers, see ``runstats``) and
``TaskDurationFlag`` (written by the watchdog). Percentiles come from merged log-scale
histograms, so they read within about 5 % of the true value; ``max`` is exact.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from django.db.models import Count, Max, Min, Q, QuerySet

from celery_hygiene.models import DeadLetter, DeadLetterStatus, TaskDurationFlag, TaskRunStats
from celery_hygiene.worker.runstats import percentile


@dataclass(frozen=True)
class TaskDurations:
    task_name: str
    runs: int
    p50: float | None
    p95: float | None
    max: float | None
    flagged: int


@dataclass
class _Totals:
    runs: int = 0
    maximum: float | None = None
    histogram: Counter[int] | None = None


def duration_report(
    since: dt.datetime | None = None, task_pattern: str | None = None
) -> list[TaskDurations]:
    """Rows sorted worst first: most flagged runs, then slowest p95.

    ``since`` keeps statistics windows (hours) that end after it, so the first hour may be
    partly older; flagged runs are cut exactly.
    """
    totals = _run_totals(since)
    flagged = _flag_counts(since)
    names = sorted(set(totals) | set(flagged))
    if task_pattern:
        names = [name for name in names if fnmatch.fnmatchcase(name, task_pattern)]
    rows = [_row(name, totals.get(name, _Totals()), flagged.get(name, 0)) for name in names]
    return sorted(rows, key=lambda r: (-r.flagged, -(r.p95 or 0.0), r.task_name))


def _run_totals(since: dt.datetime | None) -> dict[str, _Totals]:
    stats = TaskRunStats.objects.all()
    if since is not None:
        stats = stats.filter(window_start__gt=since - dt.timedelta(hours=1))
    totals: dict[str, _Totals] = {}
    for row in _in_batches(stats.only("task_name", "runs", "max_seconds", "histogram")):
        total = totals.setdefault(row.task_name, _Totals(histogram=Counter()))
        total.runs += row.runs
        total.maximum = max(total.maximum or 0.0, row.max_seconds)
        assert total.histogram is not None
        total.histogram.update({int(index): count for index, count in row.histogram.items()})
    return totals


def _in_batches(rows: QuerySet[TaskRunStats], size: int = 2000) -> Iterator[TaskRunStats]:
    """Keyset pages by primary key instead of ``.iterator()``: a server-side cursor would break
    behind PgBouncer in transaction mode, and the whole table need not sit in memory."""
    last = 0
    while True:
        page = list(rows.filter(pk__gt=last).order_by("pk")[:size])
        yield from page
        if len(page) < size:
            return
        last = page[-1].pk


def _flag_counts(since: dt.datetime | None) -> dict[str, int]:
    flags = TaskDurationFlag.objects.all()
    if since is not None:
        flags = flags.filter(flagged_at__gte=since)
    counts = flags.values("task_name").annotate(n=Count("id")).order_by()
    return {row["task_name"]: row["n"] for row in counts}


def _row(name: str, totals: _Totals, flagged: int) -> TaskDurations:
    histogram = totals.histogram or Counter()
    # A percentile never reads above the exact maximum (the bucket middle can).
    p50, p95 = (percentile(histogram, q) for q in (0.5, 0.95))
    if totals.maximum is not None:
        p50 = min(p50, totals.maximum) if p50 is not None else None
        p95 = min(p95, totals.maximum) if p95 is not None else None
    return TaskDurations(name, totals.runs, p50, p95, totals.maximum, flagged)


# -- incident summary of dead letters -------------------------------------------------------------


@dataclass(frozen=True)
class IncidentGroup:
    """Dead letters of one task, exception type and reason: one incident, usually."""

    task_name: str
    exception_type: str
    reason: str
    count: int
    pending: int
    first_failed_at: dt.datetime
    last_failed_at: dt.datetime

    def as_json(self) -> dict[str, object]:
        return {
            "task_name": self.task_name,
            "exception_type": self.exception_type,
            "reason": self.reason,
            "count": self.count,
            "pending": self.pending,
            "first_failed_at": self.first_failed_at.astimezone(dt.UTC).isoformat(),
            "last_failed_at": self.last_failed_at.astimezone(dt.UTC).isoformat(),
        }

    def filter_params(self) -> dict[str, str]:
        """The admin changelist's query string for this group."""
        return {
            "task": self.task_name,
            "exception": self.exception_type,
            "reason__exact": self.reason,
        }


def incident_summary(
    queryset: QuerySet[DeadLetter] | None = None,
    since: dt.datetime | None = None,
    limit: int | None = None,
) -> list[IncidentGroup]:
    """Counts grouped by task x exception type x reason, most recently failing group first.

    One ``GROUP BY`` over the rows that failed since ``since`` (walked through the recency
    index); give a ``since`` on big tables. First/last are the group's first and last failure.
    """
    rows = DeadLetter.objects.all() if queryset is None else queryset
    if since is not None:
        rows = rows.filter(last_failed_at__gte=since)
    grouped = (
        rows.order_by()
        .values("task_name", "exception_type", "reason")
        .annotate(
            count=Count("id"),
            pending=Count("id", filter=Q(status=DeadLetterStatus.PENDING)),
            first=Min("first_failed_at"),
            last=Max("last_failed_at"),
        )
        .order_by("-last", "task_name", "exception_type", "reason")
    )
    if limit is not None:
        grouped = grouped[:limit]
    return [
        IncidentGroup(
            row["task_name"],
            row["exception_type"],
            row["reason"],
            row["count"],
            row["pending"],
            row["first"],
            row["last"],
        )
        for row in grouped
    ]
