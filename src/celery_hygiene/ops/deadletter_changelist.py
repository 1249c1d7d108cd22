"""The dead-letter browser's list: counts that stay cheap on millions of rows, filter choices
sampled from recent rows, the UTC day of the date filter."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property

from celery_hygiene.failures.deadletters import short_type
from celery_hygiene.models import DeadLetter

# django-stubs makes these generic; Django's own classes are not subscriptable at runtime.
if TYPE_CHECKING:
    _Paginator = Paginator[Any]
else:
    _Paginator = Paginator


# How many recent dead letters the task/exception filter choices are read from.
FILTER_SAMPLE_ROWS = 5000
# Up to this many matches are counted exactly; past it the planner's estimate is shown.
EXACT_COUNT_LIMIT = 10_000


@contextmanager
def utc() -> Iterator[None]:
    """Render admin pages in UTC, the zone the CLI prints and reads."""
    with timezone.override(dt.UTC):
        yield


class EstimatedCountPaginator(_Paginator):
    """A paginator that never counts a whole large table.

    Unfiltered: PostgreSQL's ``reltuples`` (kept fresh by autovacuum). Filtered: an exact count
    capped at ``EXACT_COUNT_LIMIT`` rows, then the planner's row estimate. Small results (what an
    operator usually filters down to) are exact; huge ones are approximate.
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        unfiltered = not queryset.query.where
        if unfiltered:
            estimate = _table_estimate(queryset)
            if estimate > EXACT_COUNT_LIMIT:
                return estimate
        capped = queryset.order_by()[: EXACT_COUNT_LIMIT + 1].count()
        if capped <= EXACT_COUNT_LIMIT:
            return capped
        return max(capped, _planner_estimate(queryset))


def _table_estimate(queryset: QuerySet[Any]) -> int:
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return -1
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [connection.ops.quote_name(queryset.model._meta.db_table)],
        )
        row = cursor.fetchone()
    # -1 means "never analyzed" (PostgreSQL 14+): fall back to counting.
    return int(row[0]) if row and row[0] is not None else -1


def _planner_estimate(queryset: QuerySet[Any]) -> int:
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return 0
    sql, params = queryset.order_by().query.get_compiler(using=queryset.db).as_sql()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


class DeadLetterChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        # Tracebacks and payloads can be hundreds of KB each; the list shows neither.
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .defer("args", "kwargs", "headers", "traceback")
        )


class _RecentValuesFilter(admin.SimpleListFilter):
    """Choices are the values seen in the newest dead letters (an index walk, not a DISTINCT
    over the whole table); the chosen value is always offered so it can be seen and cleared."""

    field_name = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        recent = DeadLetter.objects.order_by("-last_failed_at", "-id").values_list(
            self.field_name, flat=True
        )[:FILTER_SAMPLE_ROWS]
        values = set(recent)
        if self.value():
            values.add(self.value())
        return [(value, self.label(value)) for value in sorted(values)]

    def label(self, value: str) -> str:
        return value

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value():
            return queryset.filter(**{self.field_name: self.value()})
        return queryset


class TaskNameFilter(_RecentValuesFilter):
    title = "task"
    parameter_name = "task"
    field_name = "task_name"


class ExceptionTypeFilter(_RecentValuesFilter):
    title = "exception type"
    parameter_name = "exception"
    field_name = "exception_type"

    def label(self, value: str) -> str:
        module = value.rpartition(".")[0]
        return f"{short_type(value)} ({module})" if module else value
