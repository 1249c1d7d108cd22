"""The dead-letter browser's actions: replay, discard, recover the selected rows, and "replay all
matching" in batches that each fit one request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from celery_hygiene import conf
from celery_hygiene.failures import history
from celery_hygiene.failures.deadletters import format_utc
from celery_hygiene.failures.replay import (
    RecoverError,
    discard,
    paced,
    recover,
    replay,
)
from celery_hygiene.models import DeadLetter, DeadLetterStatus
from celery_hygiene.ops.deadletter_changelist import EstimatedCountPaginator, utc

# django-stubs makes these generic; Django's own classes are not subscriptable at runtime.
if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[DeadLetter]
else:
    _ModelAdmin = admin.ModelAdmin


# Rows one admin action may touch; more belongs to `manage.py deadletter`, which is rate-limited
# and shows progress, instead of one web request holding locks and publishing for minutes.
ACTION_MAX_ROWS = 500
# "Replay all matching": one request replays about this many seconds' worth at REPLAY_RATE, then
# the page posts the next batch; no request holds a long transaction or loads every row.
REPLAY_ALL_SECONDS_PER_REQUEST = 5.0


class DeadLetterActions(_ModelAdmin):
    """Replay, discard and recover: the admin actions and "replay all matching"."""

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return _has_perm(request, "celery_hygiene.replay_deadletter")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return _has_perm(request, "celery_hygiene.discard_deadletter")

    def has_recover_permission(self, request: HttpRequest) -> bool:
        return self.has_replay_permission(request)

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


class DeadLetterReplayAll(DeadLetterActions):
    """ "Replay all matching": the filtered list replayed in batches that each fit one request."""

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


def _has_perm(request: HttpRequest, perm: str) -> bool:
    user: Any = request.user  # a User or AnonymousUser; both answer has_perm
    return bool(user.has_perm(perm))
