"""Admin for the duration watchdog: flagged runs, and the duration report as a page.

Both are read-only: the rows are written by workers, and editing them would only hide facts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from .durations import DurationError, parse_since
from .models import TaskDurationFlag, TaskRunStats
from .report import duration_report

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


@admin.register(TaskDurationFlag)
class TaskDurationFlagAdmin(_ReadOnly):
    list_display = (
        "task_name",
        "task_id",
        "worker_hostname",
        "started_at",
        "threshold",
        "over_by",
        "final_duration",
        "flagged_at",
    )
    list_filter = ("task_name", "worker_hostname")
    search_fields = ("task_name", "task_id")
    date_hierarchy = "flagged_at"


@admin.register(TaskRunStats)
class TaskRunStatsAdmin(_ReadOnly):
    """Its changelist is the report (``manage.py taskhygiene report``), not the raw rows."""

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        since_text = request.GET.get("since", "7d")
        try:
            since = parse_since(since_text)
            error = ""
        except DurationError as exc:
            since, error = parse_since("7d"), str(exc)
        context = {
            **self.admin_site.each_context(request),
            "title": "Task durations",
            "opts": self.model._meta,
            "rows": duration_report(since=since, task_pattern=request.GET.get("task") or None),
            "since": since_text,
            "task": request.GET.get("task", ""),
            "error": error,
        }
        return TemplateResponse(
            request,
            "admin/celery_hygiene/taskrunstats/report.html",
            {**context, **(extra_context or {})},
        )
