"""Admin for delay_on_commit's intents: what is in flight, how old, how often re-sent.

Read-only: a row is the message itself, written by producers and moved by the relay; deleting one
by hand would lose the work it stands for (an operator gives up on work through the dead letter
the relay writes past ``ENQUEUE_MAX_RESENDS``). The changelist's title carries the summary
(pending, oldest age, re-sent, undeliverable dead letters), the figures ``taskhygiene report``
prints.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from celery_hygiene.failures import intents
from celery_hygiene.failures.deadletters import format_utc
from celery_hygiene.models import EnqueueIntent
from celery_hygiene.ops.watchdog_admin import _ReadOnly, seconds


@admin.register(EnqueueIntent)
class EnqueueIntentAdmin(_ReadOnly):
    list_display = (
        "task_name",
        "task_id",
        "entity",
        "queue",
        "age",
        "resends",
        "published",
        "next_look",
        "last_error_short",
    )
    list_filter = ("task_name", "queue")
    search_fields = ("task_id", "entity", "task_name")
    ordering = ("created_at",)
    readonly_fields = [f.name for f in EnqueueIntent._meta.fields]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        found = intents.summary()
        title = (
            f"Enqueue intents: {found.pending} pending, oldest "
            f"{seconds(found.oldest_seconds)}, {found.resent} re-sent, "
            f"{found.undeliverable} undeliverable (dead letters)"
        )
        return super().changelist_view(request, {**(extra_context or {}), "title": title})

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: EnqueueIntent) -> str:
        return seconds((timezone.now() - obj.created_at).total_seconds())

    @admin.display(description="last sent (UTC)", ordering="published_at")
    def published(self, obj: EnqueueIntent) -> str:
        return format_utc(obj.published_at) if obj.published_at else "after COMMIT"

    @admin.display(description="next look (UTC)", ordering="next_attempt_at")
    def next_look(self, obj: EnqueueIntent) -> str:
        return format_utc(obj.next_attempt_at)

    @admin.display(description="last error")
    def last_error_short(self, obj: EnqueueIntent) -> str:
        return obj.last_error[:120]
