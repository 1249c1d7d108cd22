"""Admin for the duration watchdog: flagged runs, and the duration report as a page.

Both are read-only: the rows are written by workers, and editing them would only hide facts.
Durations are shown with units (``580 ms``, ``12.4 s``), times in UTC with seconds.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from celery_hygiene.failures.deadletters import format_utc
from celery_hygiene.failures.durations import DurationError
from celery_hygiene.failures.selection import since_utc
from celery_hygiene.models import TaskDurationFlag, TaskRunStats
from celery_hygiene.ops.report import duration_report


def seconds(value: float | None) -> str:
    """``0.5801541805267334`` -> ``580 ms``; ``12.04`` -> ``12.0 s``; ``None`` -> ``-``."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 600:
        return f"{value:.1f} s"
    minutes, rest = divmod(value, 60)
    return f"{minutes:.0f} min {rest:.0f} s"


def _fixed(value: float | None) -> str:
    """Report cells: seconds with three decimals and the unit, aligned in a column."""
    return "-" if value is None else f"{value:.3f} s"


# django-stubs makes ModelAdmin generic; Django's own is not subscriptable at runtime.
if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = admin.ModelAdmin


class _ReadOnly(_ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        with timezone.override(dt.UTC):
            response = super().changelist_view(request, extra_context)
            if hasattr(response, "render"):
                response.render()
        return response

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        with timezone.override(dt.UTC):
            response = super().change_view(request, object_id, form_url, extra_context)
            if hasattr(response, "render"):
                response.render()
        return response


@admin.register(TaskDurationFlag)
class TaskDurationFlagAdmin(_ReadOnly):
    # What an operator compares first (when, which task, by how much) left of what they
    # rarely need (worker; the task id is searchable and on the detail page), so 1,280 px shows
    # every number.
    change_list_template = "admin/celery_hygiene/taskdurationflag/change_list.html"
    list_display = (
        "flagged",
        "task",
        "over_by_display",
        "final_duration_display",
        "threshold_display",
        "worker",
    )
    list_display_links = ("flagged",)
    list_filter = ("task_name", "worker_hostname")
    search_fields = ("task_name", "task_id")
    date_hierarchy = "flagged_at"
    fields = (
        "task_name",
        "task_id",
        "worker_hostname",
        "worker_pid",
        "started",
        "flagged",
        "ended",
        "threshold_display",
        "over_by_display",
        "final_duration_display",
    )

    @admin.display(description="flagged at (UTC)", ordering="flagged_at")
    def flagged(self, obj: TaskDurationFlag) -> str:
        return format_html(
            '<span title="task id {}">{}</span>', obj.task_id, format_utc(obj.flagged_at)
        )

    @admin.display(description="started")
    def started(self, obj: TaskDurationFlag) -> str:
        return format_utc(obj.started_at)

    @admin.display(description="ended")
    def ended(self, obj: TaskDurationFlag) -> str:
        return format_utc(obj.ended_at, empty="still running, or not known")

    @admin.display(description="threshold", ordering="threshold")
    def threshold_display(self, obj: TaskDurationFlag) -> str:
        return seconds(obj.threshold)

    @admin.display(description="over by", ordering="over_by")
    def over_by_display(self, obj: TaskDurationFlag) -> str:
        return seconds(obj.over_by)

    @admin.display(description="final duration", ordering="final_duration")
    def final_duration_display(self, obj: TaskDurationFlag) -> str:
        return seconds(obj.final_duration) if obj.final_duration is not None else "running"

    @admin.display(description="task name", ordering="task_name")
    def task(self, obj: TaskDurationFlag) -> str:
        return format_html(
            '<div class="hyg-cut hyg-cut-task" title="{}">{}</div>', obj.task_name, obj.task_name
        )

    @admin.display(description="worker", ordering="worker_hostname")
    def worker(self, obj: TaskDurationFlag) -> str:
        host = obj.worker_hostname
        return format_html('<div class="hyg-cut hyg-cut-worker" title="{}">{}</div>', host, host)


@admin.register(TaskRunStats)
class TaskRunStatsAdmin(_ReadOnly):
    """Its changelist is the report (``manage.py taskhygiene report``), not the raw rows."""

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        # The report replaces the changelist, so it must check what the changelist would.
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        since_text = request.GET.get("since", "7d")
        try:
            since = since_utc(since_text)
            error = ""
        except DurationError as exc:
            since, error = since_utc("7d"), str(exc)
        rows = [
            {
                "task_name": row.task_name,
                "runs": row.runs,
                "p50": _fixed(row.p50),
                "p95": _fixed(row.p95),
                "max": _fixed(row.max),
                "flagged": row.flagged,
            }
            for row in duration_report(since=since, task_pattern=request.GET.get("task") or None)
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Task durations",
            "opts": self.model._meta,
            "rows": rows,
            "since": since_text,
            "since_utc": format_utc(since),
            "task": request.GET.get("task", ""),
            "error": error,
        }
        return TemplateResponse(
            request,
            "admin/celery_hygiene/taskrunstats/report.html",
            {**context, **(extra_context or {})},
        )
