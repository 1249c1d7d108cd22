"""The dead-letter browser's columns and detail fields: how one dead letter reads."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from celery_hygiene.failures.deadletters import describe_failure, format_utc, short_type
from celery_hygiene.failures.redaction import redact
from celery_hygiene.failures.replay import replay_outcome
from celery_hygiene.models import DeadLetter

# django-stubs makes these generic; Django's own classes are not subscriptable at runtime.
if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[DeadLetter]
else:
    _ModelAdmin = admin.ModelAdmin


def _pretty_json(value: Any) -> str:
    return format_html(
        '<pre class="celery-hygiene-json">{}</pre>',
        json.dumps(redact(value), indent=2, sort_keys=True, ensure_ascii=False),
    )


class DeadLetterColumns(_ModelAdmin):
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


def _link(obj: DeadLetter) -> str:
    url = reverse("admin:celery_hygiene_deadletter_change", args=[obj.pk])
    return format_html('<a href="{}">#{} {}</a>', url, obj.pk, obj.status)


def _cut(text: str, kind: str, title: str) -> str:
    """One line, cut with an ellipsis by CSS (the full text is the tooltip): a long exception
    message or task name must not push STATUS and FAILED AT off-screen."""
    return format_html('<div class="hyg-cut hyg-cut-{}" title="{}">{}</div>', kind, title, text)
