"""The admin dead-letter browser through Django's test client (the browser test drives Chromium)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from celery import Celery
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from celery_hygiene.models import DeadLetter, DeadLetterStatus
from celery_hygiene.ops import deadletter_actions, deadletter_changelist
from celery_hygiene.ops.deadletter_admin import EstimatedCountPaginator
from tests.test_deadletter_cli import fetch, make

CHANGELIST = reverse("admin:celery_hygiene_deadletter_changelist")


def detail_url(pk: int) -> str:
    return reverse("admin:celery_hygiene_deadletter_change", args=[pk])


def staff(username: str, *perms: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="celery_hygiene", codename__in=perms)
    )
    return user


@pytest.fixture
def operator(hygiene_app: Celery) -> Client:
    client = Client()
    client.force_login(
        staff("oncall", "view_deadletter", "replay_deadletter", "discard_deadletter")
    )
    return client


@pytest.fixture
def viewer() -> Client:
    client = Client()
    client.force_login(staff("auditor", "view_deadletter"))
    return client


def listed_ids(html: str) -> list[int]:
    return [int(pk) for pk in re.findall(r"/deadletter/(\d+)/change/", html)]


@pytest.mark.django_db
def test_changelist_columns_order_filters_and_search(operator):
    old = make(last_failed_at=timezone.now() - dt.timedelta(days=10), task_id="t-old")
    timeout = make(exception_type="requests.exceptions.Timeout", exception_message="read timed out")
    other = make(task_name="tests.deadletter.always_fails", entity="order-42", task_id="t-other")
    done = make(status=DeadLetterStatus.REPLAYED)

    page = operator.get(CHANGELIST).content.decode()
    for column in ("Task name", "Entity", "Exception", "Tries", "Failed at (UTC)", "Status"):
        assert f">{column}<" in page or f">{column.lower()}<" in page.lower()
    assert listed_ids(page) == [done.pk, other.pk, timeout.pk, old.pk]  # newest first
    assert "ConnectionError: gateway down" in page

    def ids(**params: str) -> list[int]:
        return listed_ids(operator.get(CHANGELIST, params).content.decode())

    assert ids(task="tests.deadletter.always_fails") == [other.pk]
    assert ids(exception="requests.exceptions.Timeout") == [timeout.pk]
    assert ids(status__exact="replayed") == [done.pk]
    since = (timezone.now() - dt.timedelta(days=7)).isoformat()
    assert old.pk not in ids(last_failed_at__gte=since)
    assert ids(q="t-old") == [old.pk]  # task id
    assert ids(q="order-42") == [other.pk]  # entity
    assert ids(q="timed out") == [timeout.pk]  # exception message
    # Filter choices come from the data, so a new task name shows up without configuration.
    assert "?task=tests.deadletter.always_fails" in page


@pytest.mark.django_db
def test_changelist_never_counts_the_whole_table(operator):
    for _ in range(3):
        make()
    with CaptureQueriesContext(connection) as queries:
        assert operator.get(CHANGELIST).status_code == 200
        assert operator.get(CHANGELIST, {"status__exact": "pending"}).status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "the paginator should count (capped) small results"
    assert all("LIMIT" in sql.upper() for sql in counts), counts
    # The list query leaves the heavy columns out.
    [listing] = [
        q["sql"]
        for q in queries.captured_queries
        if "ORDER BY" in q["sql"] and "LIMIT 50" in q["sql"]
    ][:1]
    assert '"traceback"' not in listing and '"kwargs"' not in listing


@pytest.mark.django_db
def test_paginator_uses_estimates_past_the_exact_limit(monkeypatch):
    monkeypatch.setattr(deadletter_changelist, "EXACT_COUNT_LIMIT", 3)
    for i in range(6):
        make(status="pending" if i % 2 else "discarded")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE celery_hygiene_deadletter")

    with CaptureQueriesContext(connection) as queries:
        assert EstimatedCountPaginator(DeadLetter.objects.all(), 50).count == 6  # reltuples
    assert not any("COUNT(" in q["sql"].upper() for q in queries.captured_queries)
    assert EstimatedCountPaginator(DeadLetter.objects.filter(status="pending"), 50).count == 3
    estimated = EstimatedCountPaginator(DeadLetter.objects.filter(attempts__gte=1), 50).count
    assert estimated >= 4  # more than the cap: the planner's estimate, at least the capped count


@pytest.mark.django_db
def test_detail_is_read_only_with_pretty_redacted_json_and_traceback(viewer):
    dl = make(
        args=["k1", {"api_key": "sk-live-123"}],
        kwargs={"amount": 5, "nested": [{"Authorization": "Bearer abc"}]},
        traceback='Traceback (most recent call last):\n  File "shop/tasks.py", line 9, in charge\n'
        "ConnectionError: gateway <down>",
    )
    page = viewer.get(detail_url(dl.pk)).content.decode()
    assert "sk-live-123" not in page and "Bearer abc" not in page
    assert "&quot;api_key&quot;: &quot;********&quot;" in page
    assert '<pre class="celery-hygiene-json">[\n  &quot;k1&quot;,' in page  # indented JSON
    assert '<pre class="celery-hygiene-traceback">Traceback (most recent call last):\n' in page
    assert "gateway &lt;down&gt;" in page  # escaped, line breaks kept
    assert 'name="_save"' not in page and "<textarea" not in page
    assert 'id="replay-this"' not in page  # view-only: no replay button


@pytest.mark.django_db
def test_view_only_staff_can_browse_but_not_replay_or_discard(viewer):
    dl = make()
    page = viewer.get(CHANGELIST).content.decode()
    assert listed_ids(page) == [dl.pk]
    assert "replay_selected" not in page and "discard_selected" not in page
    response = viewer.post(
        CHANGELIST,
        {"action": "replay_selected", "_selected_action": [dl.pk], "index": 0, "post": "yes"},
    )
    assert response.status_code in (200, 302)
    dl.refresh_from_db()
    assert dl.status == "pending"


def _act(client: Client, action: str, ids: list[int], **extra: Any) -> Any:
    data = {"action": action, "_selected_action": ids, "index": 0, **extra}
    return client.post(CHANGELIST, data, follow=True)


@pytest.mark.django_db(transaction=True)
def test_replay_action_asks_for_confirmation_then_replays(operator, hygiene_app, queue_name):
    dl = make(queue=queue_name)
    done = make(status=DeadLetterStatus.DISCARDED, queue=queue_name)

    confirm = _act(operator, "replay_selected", [dl.pk, done.pk]).content.decode()
    assert "Replay 1 pending dead letter?" in confirm and 'value="Yes, replay 1"' in confirm
    dl.refresh_from_db()
    assert dl.status == "pending" and fetch(hygiene_app, queue_name) == []

    result = operator.post(
        CHANGELIST,
        {"action": "replay_selected", "_selected_action": [dl.pk, done.pk], "post": "yes"},
        follow=True,
    ).content.decode()
    assert "Replayed 1 dead letter." in result
    dl.refresh_from_db()
    assert dl.status == "replayed"
    [message] = fetch(hygiene_app, queue_name)
    assert message.headers["id"] == dl.replayed_task_id


@pytest.mark.django_db(transaction=True)
def test_replay_of_an_unregistered_task_is_reported_and_left_pending(operator, queue_name):
    dl = make(task_name="shop.tasks.removed", queue=queue_name)
    page = operator.post(
        CHANGELIST,
        {"action": "replay_selected", "_selected_action": [dl.pk], "post": "yes"},
        follow=True,
    ).content.decode()
    assert "Not replayed: task &#x27;shop.tasks.removed&#x27;" in page and "not registered" in page
    dl.refresh_from_db()
    assert dl.status == "pending"


@pytest.mark.django_db
def test_discard_action_and_the_bulk_cap(operator, monkeypatch):
    a, b, c = make(), make(), make()
    monkeypatch.setattr(deadletter_actions, "ACTION_MAX_ROWS", 2)
    page = _act(operator, "discard_selected", [a.pk, b.pk, c.pk], post="yes").content.decode()
    assert "More than 2 pending dead letters selected; nothing was changed" in page
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"pending"}

    page = _act(operator, "discard_selected", [a.pk, b.pk], post="yes").content.decode()
    assert "Discarded 2 dead letters." in page
    assert dict(DeadLetter.objects.values_list("pk", "status")) == {
        a.pk: "discarded",
        b.pk: "discarded",
        c.pk: "pending",
    }


@pytest.mark.django_db
def test_detail_page_offers_replay_to_operators(operator):
    dl = make()
    page = operator.get(detail_url(dl.pk)).content.decode()
    assert 'id="replay-this"' in page and 'id="discard-this"' in page
    confirm = operator.post(
        CHANGELIST, {"action": "replay_selected", "_selected_action": [dl.pk]}
    ).content.decode()
    assert "Replay 1 pending dead letter?" in confirm
