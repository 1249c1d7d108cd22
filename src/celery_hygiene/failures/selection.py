"""Which dead letters an operator means: ids or a filter, as one queryset for CLI and admin.

Every filter here is served by an index on ``DeadLetter`` (task name, status, recency), except
the exception type, entity and reason, which narrow rows the recency index already walks newest
first.

Times typed by an operator are read in UTC (``--since 2026-11-25`` is midnight UTC), the zone
every time is shown in; an explicit offset (``2026-11-25T08:00+02:00``) is honoured.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from django.db.models import Q, QuerySet
from django.utils import timezone

from celery_hygiene.failures.durations import parse_since
from celery_hygiene.models import DeadLetter

GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Selection:
    ids: tuple[int, ...] = ()
    task: str | None = None  # exact name, or a glob such as "shop.*"
    statuses: tuple[str, ...] = ()
    exception: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    entity: str | None = None
    reason: str | None = None

    @property
    def is_filtered(self) -> bool:
        return bool(
            self.ids
            or self.task
            or self.statuses
            or self.exception
            or self.since
            or self.until
            or self.entity
            or self.reason
        )

    def queryset(self, using: str | None = None) -> QuerySet[DeadLetter]:
        qs = DeadLetter.objects.all() if using is None else DeadLetter.objects.using(using)
        if self.ids:
            qs = qs.filter(pk__in=self.ids)
        if self.task:
            qs = qs.filter(task_matches(self.task))
        if self.statuses:
            qs = qs.filter(status__in=self.statuses)
        if self.exception:
            qs = qs.filter(exception_matches(self.exception))
        if self.entity:
            qs = qs.filter(entity=self.entity)
        if self.reason:
            qs = qs.filter(reason=self.reason)
        if self.since is not None:
            qs = qs.filter(last_failed_at__gte=self.since)
        if self.until is not None:
            qs = qs.filter(last_failed_at__lt=self.until)
        return qs


def is_glob(pattern: str) -> bool:
    return any(ch in GLOB_CHARS for ch in pattern)


def task_matches(pattern: str) -> Q:
    """Exact name, or a shell glob as ``taskhygiene report --task`` takes (``shop.*``).

    ``prefix*`` uses the task-name index (a LIKE prefix); other globs become an anchored regex.
    """
    if not is_glob(pattern):
        return Q(task_name=pattern)
    if pattern.endswith("*") and not is_glob(pattern[:-1]):
        return Q(task_name__startswith=pattern[:-1])
    return Q(task_name__regex=glob_to_regex(pattern))


def glob_to_regex(pattern: str) -> str:
    """fnmatch semantics in a regex both PostgreSQL and Python read (no ``(?s:...)``)."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "^" + "".join(out) + "$"


def exception_matches(name: str) -> Q:
    """``TimeoutError`` matches ``TimeoutError``; ``HTTPError`` also matches ``requests.HTTPError``.

    Exception types are stored qualified (``module.Class``, builtins bare), but operators type
    the short name they saw in a log line.
    """
    return Q(exception_type=name) | Q(exception_type__endswith=f".{name}")


def since_utc(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``parse_since`` with a date or a datetime without offset read as UTC, not the server's
    zone. Raises ``DurationError`` on malformed input."""
    with timezone.override(dt.UTC):
        return parse_since(text, now=now)
