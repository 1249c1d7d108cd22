"""The admin dead-letter browser: find what failed, read why, replay or discard it.

Built for a table with millions of rows: no exact ``COUNT(*)`` per page view (see
:class:`EstimatedCountPaginator`), sorting only on the indexed failure time, filter choices
sampled from recent rows instead of ``SELECT DISTINCT`` over the table, and heavy columns
(traceback, payload) left out of the list query.

Times are shown in UTC, to the second, labelled; the date filter's "today" is a UTC day too.
Replay, discard and recover leave a ``LogEntry`` (the object's *History*), see ``history``.

One admin class over three rooms of its own: the list (``deadletter_changelist``), the columns
and detail fields (``deadletter_columns``), the actions (``deadletter_actions``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from celery_hygiene.failures.deadletters import format_utc, short_type
from celery_hygiene.models import DeadLetter, DeadLetterStatus
from celery_hygiene.ops.deadletter_actions import ACTION_MAX_ROWS as ACTION_MAX_ROWS
from celery_hygiene.ops.deadletter_actions import (
    REPLAY_ALL_SECONDS_PER_REQUEST as REPLAY_ALL_SECONDS_PER_REQUEST,
)
from celery_hygiene.ops.deadletter_actions import DeadLetterReplayAll
from celery_hygiene.ops.deadletter_changelist import EXACT_COUNT_LIMIT as EXACT_COUNT_LIMIT
from celery_hygiene.ops.deadletter_changelist import FILTER_SAMPLE_ROWS as FILTER_SAMPLE_ROWS
from celery_hygiene.ops.deadletter_changelist import (
    DeadLetterChangeList,
    EstimatedCountPaginator,
    ExceptionTypeFilter,
    TaskNameFilter,
    utc,
)
from celery_hygiene.ops.deadletter_columns import DeadLetterColumns
from celery_hygiene.ops.report import incident_summary

# django-stubs makes these generic; Django's own classes are not subscriptable at runtime.


# The incident summary at the top of the list: groups shown, and the window when no date
# filter is chosen.
SUMMARY_GROUPS = 10
SUMMARY_WINDOW = dt.timedelta(hours=24)


@admin.register(DeadLetter)
class DeadLetterAdmin(DeadLetterReplayAll, DeadLetterColumns):
    list_display = ("task", "entity_cut", "exception", "tries", "failed_at", "status")
    list_display_links = ("task",)
    list_filter = (
        TaskNameFilter,
        ExceptionTypeFilter,
        "status",
        "reason",
        ("last_failed_at", admin.DateFieldListFilter),
    )
    search_fields = ("=task_id", "entity", "exception_message")
    search_help_text = "Task id (exact), entity, or words from the exception message."
    ordering = ("-last_failed_at", "-id")
    # Only the failure time is backed by an index in both directions (celery_hyg_dl_recent).
    sortable_by = ("failed_at",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    list_per_page = 50
    actions = ["replay_selected", "discard_selected", "recover_selected"]
    change_form_template = "admin/celery_hygiene/deadletter/change_form.html"
    change_list_template = "admin/celery_hygiene/deadletter/change_list.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_name",
                    "task_id",
                    "status",
                    "replay_outcome",
                    "reason",
                    "attempts",
                    "first_failed",
                    "last_failed",
                    "worker_hostname",
                )
            },
        ),
        (
            "Error",
            {
                "fields": (
                    "exception_type",
                    "explanation",
                    "exception_message",
                    "traceback_text",
                )
            },
        ),
        ("Payload", {"fields": ("args_json", "kwargs_json", "payload_truncated", "payload_note")}),
        (
            "Routing",
            {
                "fields": (
                    "queue",
                    "exchange",
                    "routing_key",
                    "priority",
                    "headers_json",
                    "entity",
                    "operation",
                )
            },
        ),
        (
            "Replay history",
            {"fields": ("replay_of_link", "replays_links", "replayed_task_id", "replayed")},
        ),
    )

    # -- read-only browser -------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a dead letter is evidence: replay or discard it, never edit it

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # retention is `manage.py deadletter purge`, in bounded batches

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return DeadLetterChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        # A pasted task id is the most common search: answer it from the task_id index instead
        # of the OR with the (unindexed) entity/message LIKEs, which scans the whole table.
        term = search_term.strip()
        if term and not any(ch.isspace() for ch in term):
            by_task_id = queryset.filter(task_id=term)
            if by_task_id.exists():
                return by_task_id, False
        return super().get_search_results(request, queryset, search_term)

    # -- views -------------------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "replay-all/",
                self.admin_site.admin_view(self.replay_all_view),
                name="{}_{}_replay_all".format(*info),
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        with utc():
            response = super().changelist_view(request, extra_context)
            context = getattr(response, "context_data", None)
            if context and "cl" in context:
                context.update(self._summary_context(request, context["cl"]))
                cast(TemplateResponse, response).render()  # it has context_data
        return response

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        with utc():
            response = super().change_view(request, object_id, form_url, extra_context)
            if hasattr(response, "render"):
                response.render()
        return response

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: Any = None
    ) -> HttpResponse:
        with utc():
            response = super().history_view(request, object_id, extra_context)
            if hasattr(response, "render"):
                response.render()
        return response

    def _summary_context(self, request: HttpRequest, cl: ChangeList) -> dict[str, Any]:
        dated = any(key.startswith("last_failed_at") for key in request.GET)
        since = None if dated else timezone.now() - SUMMARY_WINDOW
        groups = incident_summary(cl.queryset, since=since, limit=SUMMARY_GROUPS + 1)
        changelist = reverse("admin:celery_hygiene_deadletter_changelist")
        rows = [
            {
                "group": group,
                "exception_short": short_type(group.exception_type),
                "url": f"{changelist}?{urlencode(group.filter_params())}",
                "first": format_utc(group.first_failed_at),
                "last": format_utc(group.last_failed_at),
            }
            for group in groups[:SUMMARY_GROUPS]
        ]
        query = request.GET.urlencode()
        replay_all = reverse("admin:celery_hygiene_deadletter_replay_all")
        return {
            "incident_rows": rows,
            "incident_more": len(groups) > SUMMARY_GROUPS,
            "incident_window": "in the chosen dates" if dated else "in the last 24 hours",
            "replay_all_url": (f"{replay_all}?{query}" if query else replay_all)
            if self.has_replay_permission(request)
            else "",
        }

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> HttpResponse:
        obj = context.get("original")
        status = getattr(obj, "status", None)
        context["can_replay"] = bool(
            status == DeadLetterStatus.PENDING and self.has_replay_permission(request)
        )
        context["can_discard"] = bool(
            status == DeadLetterStatus.PENDING and self.has_discard_permission(request)
        )
        context["can_recover"] = bool(
            status == DeadLetterStatus.REPLAYING and self.has_recover_permission(request)
        )
        return super().render_change_form(request, context, *args, **kwargs)
