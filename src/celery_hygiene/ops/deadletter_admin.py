"""The admin dead-letter browser: find what failed, read why, replay or discard it.

Built for a table with millions of rows: no exact ``COUNT(*)`` per page view (see
:class:`EstimatedCountPaginator`), sorting only on the indexed failure time, filter choices
sampled from recent rows instead of ``SELECT DISTINCT`` over the table, and heavy columns
(traceback, payload) left out of the list query.

Times are shown in UTC, to the second, labelled; the date filter's "today" is a UTC day too.
Replay, discard and recover leave a ``LogEntry`` (the object's *History*), see ``history``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from celery_hygiene import conf
from celery_hygiene.failures import history
from celery_hygiene.failures.deadletters import describe_failure, format_utc, short_type
from celery_hygiene.failures.redaction import redact
from celery_hygiene.failures.replay import (
    RecoverError,
    discard,
    paced,
    recover,
    replay,
    replay_outcome,
)
from celery_hygiene.models import DeadLetter, DeadLetterStatus
from celery_hygiene.ops.report import incident_summary

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
# "Replay all matching": one request replays about this many seconds' worth at REPLAY_RATE, then
# the page posts the next batch; no request holds a long transaction or loads every row.
REPLAY_ALL_SECONDS_PER_REQUEST = 5.0
# The incident summary at the top of the list: groups shown, and the window when no date
# filter is chosen.
SUMMARY_GROUPS = 10
SUMMARY_WINDOW = dt.timedelta(hours=24)


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


def _pretty_json(value: Any) -> str:
    return format_html(
        '<pre class="celery-hygiene-json">{}</pre>',
        json.dumps(redact(value), indent=2, sort_keys=True, ensure_ascii=False),
    )


@admin.register(DeadLetter)
class DeadLetterAdmin(_ModelAdmin):
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

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return _has_perm(request, "celery_hygiene.replay_deadletter")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return _has_perm(request, "celery_hygiene.discard_deadletter")

    def has_recover_permission(self, request: HttpRequest) -> bool:
        return self.has_replay_permission(request)

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

    def replay_all_view(self, request: HttpRequest) -> HttpResponse:
        """Replay every pending dead letter matching the changelist's filters, in batches.

        GET: a confirmation page with the count. Each POST replays one batch (about
        ``REPLAY_ALL_SECONDS_PER_REQUEST`` seconds at ``REPLAY_RATE``, keyset-paged by id) and
        answers with a page that posts the next one, so no request loads every row or runs for
        minutes; the pace between messages is the CLI's ``--rate``.
        """
        if not (self.has_view_permission(request) and self.has_replay_permission(request)):
            raise PermissionDenied
        with utc():
            try:
                cl = self.get_changelist_instance(request)
            except IncorrectLookupParameters:
                return HttpResponseRedirect(
                    reverse("admin:celery_hygiene_deadletter_changelist") + "?e=1"
                )
            pending = cl.queryset.filter(status=DeadLetterStatus.PENDING).order_by("-pk")
            back = reverse("admin:celery_hygiene_deadletter_changelist")
            query = request.GET.urlencode()
            back_url = f"{back}?{query}" if query else back
            rate = float(conf.get("REPLAY_RATE"))
            batch = max(1, min(ACTION_MAX_ROWS, int(rate * REPLAY_ALL_SECONDS_PER_REQUEST)))
            context: dict[str, Any] = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": "Replay all matching dead letters",
                "back_url": back_url,
                "filters": _describe_filters(cl),
                "rate": rate,
                "batch": batch,
            }
            if request.method != "POST":
                total = EstimatedCountPaginator(pending, 1).count
                context.update(
                    total=total,
                    sample=pending.only(
                        "pk", "task_name", "entity", "exception_type", "last_failed_at"
                    )[:20],
                    done=0,
                    failed=0,
                    after="",
                    started=False,
                )
                return TemplateResponse(
                    request, "admin/celery_hygiene/deadletter/replay_all.html", context
                ).render()
            return self._replay_all_batch(request, pending, batch, rate, back_url, context)

    def _replay_all_batch(
        self,
        request: HttpRequest,
        pending: QuerySet[Any],
        batch: int,
        rate: float,
        back_url: str,
        context: dict[str, Any],
    ) -> HttpResponse:
        after = _int(request.POST.get("after"))
        total = _int(request.POST.get("total"))
        done = _int(request.POST.get("done"))
        failed = _int(request.POST.get("failed"))
        page = pending.filter(pk__lt=after) if after else pending
        ids = list(page.values_list("pk", flat=True)[:batch])
        actor = history.admin_actor(request)
        for pk in paced(ids, rate):
            result = replay(pk)
            if result.ok:
                done += 1
                history.record(actor, "replay", {pk: _replay_note(result)})
            else:
                failed += 1
                if failed <= 20:
                    self.message_user(request, f"Not replayed: {result.message}", messages.ERROR)
        if len(ids) < batch:
            self.message_user(
                request,
                f"Replay all: {done} dead letter{'s' if done != 1 else ''} replayed"
                + (f", {failed} not replayed (left pending)" if failed else "")
                + ".",
                messages.SUCCESS if not failed else messages.WARNING,
            )
            return HttpResponseRedirect(back_url)
        context.update(
            total=max(total, done + failed),
            done=done,
            failed=failed,
            after=ids[-1],
            started=True,
        )
        return TemplateResponse(
            request, "admin/celery_hygiene/deadletter/replay_all.html", context
        ).render()

    # -- columns and detail fields -----------------------------------------------------------

    @admin.display(description="task name", ordering=None)
    def task(self, obj: DeadLetter) -> str:
        return _cut(obj.task_name, "task", obj.task_name)

    @admin.display(description="entity")
    def entity_cut(self, obj: DeadLetter) -> str:
        return _cut(obj.entity or "—", "entity", obj.entity)

    @admin.display(description="exception")
    def exception(self, obj: DeadLetter) -> str:
        message = describe_failure(obj.exception_type, obj.exception_message)
        full = f"{obj.exception_type}: {message}" if message else obj.exception_type
        shown = (
            f"{short_type(obj.exception_type)}: {message}"
            if message
            else short_type(obj.exception_type)
        )
        return _cut(shown, "exception", full)

    @admin.display(description="tries")
    def tries(self, obj: DeadLetter) -> int:
        return obj.attempts

    @admin.display(description="failed at (UTC)", ordering="last_failed_at")
    def failed_at(self, obj: DeadLetter) -> str:
        return format_html(
            '<span class="hyg-time">{}</span>',
            obj.last_failed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )

    @admin.display(description="first failed")
    def first_failed(self, obj: DeadLetter) -> str:
        return format_utc(obj.first_failed_at)

    @admin.display(description="last failed")
    def last_failed(self, obj: DeadLetter) -> str:
        return format_utc(obj.last_failed_at)

    @admin.display(description="replayed at")
    def replayed(self, obj: DeadLetter) -> str:
        return format_utc(obj.replayed_at, empty="—")

    @admin.display(description="what happened")
    def explanation(self, obj: DeadLetter) -> str:
        return describe_failure(obj.exception_type, obj.exception_message) or "—"

    @admin.display(description="replay outcome")
    def replay_outcome(self, obj: DeadLetter) -> str:
        if not obj.replayed_task_id:
            return "—"
        outcome = replay_outcome(obj)
        if outcome.dead_letter is not None:
            url = reverse("admin:celery_hygiene_deadletter_change", args=[outcome.dead_letter.pk])
            return format_html(
                '<span class="hyg-outcome hyg-outcome-{}">{} — <a href="{}">dead letter #{}</a>'
                "</span>",
                outcome.state.value,
                outcome.text,
                url,
                outcome.dead_letter.pk,
            )
        return format_html(
            '<span class="hyg-outcome hyg-outcome-{}">{}</span>', outcome.state.value, outcome.text
        )

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

    # -- actions -----------------------------------------------------------------------------

    @admin.action(description="Replay selected dead letters", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        return self._confirm_then(request, queryset, "replay_selected", self._replay)

    @admin.action(description="Discard selected dead letters", permissions=["discard"])
    def discard_selected(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        return self._confirm_then(request, queryset, "discard_selected", self._discard)

    @admin.action(
        description="Recover selected dead letters stuck in replaying", permissions=["recover"]
    )
    def recover_selected(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        ids = list(
            queryset.filter(status=DeadLetterStatus.REPLAYING).values_list("pk", flat=True)[
                : ACTION_MAX_ROWS + 1
            ]
        )
        if not ids:
            self.message_user(
                request,
                "None of the selected dead letters is replaying; recover settles only those.",
                messages.WARNING,
            )
            return None
        if len(ids) > ACTION_MAX_ROWS:
            self.message_user(
                request,
                f"More than {ACTION_MAX_ROWS} selected; use `manage.py deadletter recover`.",
                messages.ERROR,
            )
            return None
        actor = history.admin_actor(request)
        for pk in ids:
            try:
                done = recover(pk)
            except RecoverError as exc:
                self.message_user(
                    request,
                    f"Not recovered: {exc} (the --force option exists only on the command line)",
                    messages.ERROR,
                )
                continue
            history.record(actor, "recover", {pk: done})
            self.message_user(request, f"Recovered: {done}", messages.SUCCESS)
        return None

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
                "Use “Replay all matching…” above the list (batched and rate-limited), or "
                "`manage.py deadletter replay|discard` with a filter.",
                messages.ERROR,
            )
            return None
        if not ids:
            replaying = queryset.filter(status=DeadLetterStatus.REPLAYING).exists()
            self.message_user(
                request,
                "None of the selected dead letters is pending; nothing to do."
                + (
                    " One is stuck in replaying: use the action “Recover selected dead letters "
                    "stuck in replaying” (or `manage.py deadletter recover ID`)."
                    if replaying
                    else ""
                ),
                messages.WARNING,
            )
            return None
        if request.POST.get("post") == "yes":
            run(request, ids)
            return None
        with utc():
            return TemplateResponse(
                request,
                "admin/celery_hygiene/deadletter/action_confirmation.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Are you sure?",
                    "opts": self.model._meta,
                    "action": action,
                    "verb": "replay" if action == "replay_selected" else "discard",
                    "dead_letters": [
                        (dl, format_utc(dl.last_failed_at))
                        for dl in pending.filter(pk__in=ids[:100]).only(
                            "pk",
                            "task_name",
                            "entity",
                            "exception_type",
                            "last_failed_at",
                            "payload_truncated",
                        )
                    ],
                    "count": len(ids),
                    "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                    "select_across": request.POST.get("select_across", "0"),
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                },
            ).render()

    def _replay(self, request: HttpRequest, ids: list[int]) -> None:
        actor = history.admin_actor(request)
        results = []
        # A bounded, hand-picked selection goes at once; "Replay all matching" is the paced path.
        for pk in ids:
            result = replay(pk)
            results.append(result)
            if result.ok:
                history.record(actor, "replay", {pk: _replay_note(result)})
        done = [r for r in results if r.ok]
        if done:
            self.message_user(
                request,
                f"Replayed {len(done)} dead letter{'s' if len(done) != 1 else ''}. "
                "Replayed means sent: each dead letter's page shows what became of it.",
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
        changed = discard(ids)
        history.record(
            history.admin_actor(request),
            "discard",
            dict.fromkeys(changed, "marked handled, not replayed"),
        )
        count = len(changed)
        self.message_user(
            request, f"Discarded {count} dead letter{'s' if count != 1 else ''}.", messages.SUCCESS
        )


def _has_perm(request: HttpRequest, perm: str) -> bool:
    user: Any = request.user  # a User or AnonymousUser; both answer has_perm
    return bool(user.has_perm(perm))


def _link(obj: DeadLetter) -> str:
    url = reverse("admin:celery_hygiene_deadletter_change", args=[obj.pk])
    return format_html('<a href="{}">#{} {}</a>', url, obj.pk, obj.status)


def _cut(text: str, kind: str, title: str) -> str:
    """One line, cut with an ellipsis by CSS (the full text is the tooltip): a long exception
    message or task name must not push STATUS and FAILED AT off-screen."""
    return format_html('<div class="hyg-cut hyg-cut-{}" title="{}">{}</div>', kind, title, text)


def _replay_note(result: Any) -> str:
    note = f"; {result.message}" if result.message else ""
    return f"sent as task {result.task_id}{note}"


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _describe_filters(cl: ChangeList) -> list[str]:
    shown = []
    for key, value in cl.params.items():
        if key in ("p", "o"):
            continue
        shown.append(f"{key} = {value[-1] if isinstance(value, list) else value}")
    if cl.query:
        shown.append(f"search = {cl.query}")
    return shown or ["(no filter: every pending dead letter)"]
