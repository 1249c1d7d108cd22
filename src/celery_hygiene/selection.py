"""Which dead letters an operator means: ids or a filter, as one queryset for CLI and admin.

Every filter here is served by an index on ``DeadLetter`` (task name, status, recency), except
the exception type, which narrows rows the recency index already walks newest first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from .models import DeadLetter


@dataclass(frozen=True)
class Selection:
    ids: tuple[int, ...] = ()
    task: str | None = None
    statuses: tuple[str, ...] = ()
    exception: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @property
    def is_filtered(self) -> bool:
        return bool(
            self.ids or self.task or self.statuses or self.exception or self.since or self.until
        )

    def queryset(self, using: str | None = None) -> QuerySet[DeadLetter]:
        qs = DeadLetter.objects.all() if using is None else DeadLetter.objects.using(using)
        if self.ids:
            qs = qs.filter(pk__in=self.ids)
        if self.task:
            qs = qs.filter(task_name=self.task)
        if self.statuses:
            qs = qs.filter(status__in=self.statuses)
        if self.exception:
            qs = qs.filter(exception_matches(self.exception))
        if self.since is not None:
            qs = qs.filter(last_failed_at__gte=self.since)
        if self.until is not None:
            qs = qs.filter(last_failed_at__lt=self.until)
        return qs


def exception_matches(name: str) -> Q:
    """``TimeoutError`` matches ``TimeoutError``; ``HTTPError`` also matches ``requests.HTTPError``.

    Exception types are stored qualified (``module.Class``, builtins bare), but operators type
    the short name they saw in a log line.
    """
    return Q(exception_type=name) | Q(exception_type__endswith=f".{name}")
