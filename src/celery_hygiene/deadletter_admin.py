"""The admin dead-letter browser: find what failed, read why, replay or discard it.

Built for a table with millions of rows: no exact ``COUNT(*)`` per page view (see
:class:`EstimatedCountPaginator`), sorting only on the indexed failure time, filter choices
sampled from recent rows instead of ``SELECT DISTINCT`` over the table, and heavy columns
(traceback, payload) left out of the list query.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from .models import DeadLetter, DeadLetterStatus
from .redaction import redact
from .replay import replay

# django-stubs makes these generic; Django's own classes are not subscriptable at runtime.
if TYPE_CHECKING:
    _Paginator = Paginator[Any]
    _ModelAdmin = admin.ModelAdmin[DeadLetter]
else:
    _Paginator = Paginator
    _ModelAdmin = admin.ModelAdmin

# Rows one admin action may touch; more belongs to `manage.py deadletter`, which is rate-limited
# and shows progress, instead of one web request holding locks and publishing for minutes.
ACTION_MAX_ROWS = 500
# How many recent dead letters the task/exception filter choices are read from.
FILTER_SAMPLE_ROWS = 5000
# Up to this many matches are counted exactly; past it the planner's estimate is shown.
EXACT_COUNT_LIMIT = 10_000


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
        return [(value, value) for value in sorted(values)]

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


def _pretty_json(value: Any) -> str:
    return format_html(
        '<pre class="celery-hygiene-json">{}</pre>',
        json.dumps(redact(value), indent=2, sort_keys=True, ensure_ascii=False),
    )


@admin.register(DeadLetter)
class DeadLetterAdmin(_ModelAdmin):
    list_display = ("task_name", "entity", "exception", "attempts", "failed_at", "status")
    list_display_links = ("task_name",)
    list_filter = (
        TaskNameFilter,
        ExceptionTypeFilter,
        "status",
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
    actions = ["replay_selected", "discard_selected"]
    change_form_template = "admin/celery_hygiene/deadletter/change_form.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_name",
                    "task_id",
                    "status",
                    "reason",
                    "attempts",
                    "first_failed_at",
                    "last_failed_at",
                    "worker_hostname",
                )
            },
        ),
        ("Error", {"fields": ("exception_type", "exception_message", "traceback_text")}),
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
            {"fields": ("replay_of_link", "replays_links", "replayed_task_id", "replayed_at")},
        ),
    )

    # -- read-only browser -------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a dead letter is evidence: replay or discard it, never edit it

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # retention is `manage.py deadletter purge`, in bounded batches

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return _has_perm(request, "celery_hygiene.replay_deadletter")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return _has_perm(request, "celery_hygiene.discard_deadletter")

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

    # -- columns and detail fields -----------------------------------------------------------

    @admin.display(description="exception")
    def exception(self, obj: DeadLetter) -> str:
        message = " ".join(obj.exception_message.split())
        if len(message) > 80:
            message = message[:79] + "…"
        return f"{obj.exception_type}: {message}" if message else obj.exception_type

    @admin.display(description="failed at", ordering="last_failed_at")
    def failed_at(self, obj: DeadLetter) -> Any:
        return obj.last_failed_at

    @admin.display(description="args")
    def args_json(self, obj: DeadLetter) -> str:
        return _pretty_json(obj.args)

    @admin.display(description="kwargs")
    def kwargs_json(self, obj: DeadLetter) -> str:
        return _pretty_json(obj.kwargs)

    @admin.display(description="headers")
    def headers_json(self, obj: DeadLetter) -> str:
        return _pretty_json(obj.headers)

    @admin.display(description="traceback")
    def traceback_text(self, obj: DeadLetter) -> str:
        return format_html('<pre class="celery-hygiene-traceback">{}</pre>', obj.traceback or "—")

    @admin.display(description="replay of")
    def replay_of_link(self, obj: DeadLetter) -> str:
        return _link(obj.replay_of) if obj.replay_of is not None else "—"

    @admin.display(description="replayed as")
    def replays_links(self, obj: DeadLetter) -> str:
        replays = list(obj.replays.order_by("-id")[:20])
        if not replays:
            return "—"
        return format_html_join(", ", "{}", ((_link(r),) for r in replays))

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> HttpResponse:
        obj = context.get("original")
        context["can_replay"] = bool(
            obj is not None
            and obj.status == DeadLetterStatus.PENDING
            and self.has_replay_permission(request)
        )
        context["can_discard"] = bool(
            obj is not None
            and obj.status == DeadLetterStatus.PENDING
            and self.has_discard_permission(request)
        )
        return super().render_change_form(request, context, *args, **kwargs)

    # -- actions -----------------------------------------------------------------------------

    @admin.action(description="Replay selected dead letters", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        return self._confirm_then(request, queryset, "replay_selected", self._replay)

    @admin.action(description="Discard selected dead letters", permissions=["discard"])
    def discard_selected(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        return self._confirm_then(request, queryset, "discard_selected", self._discard)

    def _confirm_then(
        self, request: HttpRequest, queryset: QuerySet[Any], action: str, run: Any
    ) -> HttpResponse | None:
        pending = queryset.filter(status=DeadLetterStatus.PENDING).order_by(
            "-last_failed_at", "-id"
        )
        ids = list(pending.values_list("pk", flat=True)[: ACTION_MAX_ROWS + 1])
        if len(ids) > ACTION_MAX_ROWS:
            self.message_user(
                request,
                f"More than {ACTION_MAX_ROWS} pending dead letters selected; nothing was changed. "
                "Narrow the filter, or use `manage.py deadletter replay|discard` with a filter "
                "(rate-limited, with progress).",
                messages.ERROR,
            )
            return None
        if not ids:
            self.message_user(
                request,
                "None of the selected dead letters is pending; nothing to do.",
                messages.WARNING,
            )
            return None
        if request.POST.get("post") == "yes":
            run(request, ids)
            return None
        return TemplateResponse(
            request,
            "admin/celery_hygiene/deadletter/action_confirmation.html",
            {
                **self.admin_site.each_context(request),
                "title": "Are you sure?",
                "opts": self.model._meta,
                "action": action,
                "verb": "replay" if action == "replay_selected" else "discard",
                "dead_letters": pending.filter(pk__in=ids).only(
                    "pk",
                    "task_name",
                    "entity",
                    "exception_type",
                    "last_failed_at",
                    "payload_truncated",
                ),
                "count": len(ids),
                "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"),
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )

    def _replay(self, request: HttpRequest, ids: list[int]) -> None:
        results = [replay(pk) for pk in ids]
        done = [r for r in results if r.ok]
        if done:
            self.message_user(
                request,
                f"Replayed {len(done)} dead letter{'s' if len(done) != 1 else ''}.",
                messages.SUCCESS,
            )
        for result in results:
            if not result.ok:
                self.message_user(request, f"Not replayed: {result.message}", messages.ERROR)
            elif result.message:
                self.message_user(
                    request,
                    f"Dead letter {result.dead_letter_id}: {result.message}",
                    messages.WARNING,
                )

    def _discard(self, request: HttpRequest, ids: list[int]) -> None:
        # The status guard keeps a row someone replayed in the meantime as replayed.
        count = DeadLetter.objects.filter(pk__in=ids, status=DeadLetterStatus.PENDING).update(
            status=DeadLetterStatus.DISCARDED
        )
        self.message_user(
            request, f"Discarded {count} dead letter{'s' if count != 1 else ''}.", messages.SUCCESS
        )


def _has_perm(request: HttpRequest, perm: str) -> bool:
    user: Any = request.user  # a User or AnonymousUser; both answer has_perm
    return bool(user.has_perm(perm))


def _link(obj: DeadLetter) -> str:
    url = reverse("admin:celery_hygiene_deadletter_change", args=[obj.pk])
    return format_html('<a href="{}">#{} {}</a>', url, obj.pk, obj.status)
