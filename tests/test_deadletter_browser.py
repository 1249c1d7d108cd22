"""The admin dead-letter browser in a real headless Chromium (Debian's ``chromium`` package),
driven by Playwright against Django's live server.

Playwright's bundled browsers are not used (``playwright install`` needs downloads); the system
Chromium is launched by path. ``scripts/bootstrap.sh`` installs both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User

from celery_hygiene.models import DeadLetter
from tests.test_deadletter_cli import fetch, make

# On a developer machine without the browser the test is skipped with the reason; in CI (where
# scripts/bootstrap.sh installs both) a missing browser is a failure, never a silent skip.
IN_CI = bool(os.environ.get("CI"))
if IN_CI:
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

CHROMIUM = os.environ.get("HYGIENE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not IN_CI and not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM}"
    ),
]


@contextmanager
def chromium() -> Iterator[Any]:
    """Start the browser after the test data exists and do ORM work only after it stops.

    Playwright's sync API runs the test between browser steps inside its own greenlet context;
    a database connection opened there is invisible to pytest-django's teardown and stays open,
    which blocks dropping the test database.
    """
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def staff(username: str, *perms: str) -> None:
    user = User.objects.create_user(username, password="correct horse", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="celery_hygiene", codename__in=perms)
    )


def log_in(browser: Any, live_server: Any, username: str) -> Any:
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/celery_hygiene/deadletter/")
    page.fill("#id_username", username)
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    return page


def row(page: Any, pk: int) -> Any:
    return page.locator("#result_list tbody tr").filter(
        has=page.locator(f"input[name=_selected_action][value='{pk}']")
    )


def test_operator_filters_opens_and_replays_a_dead_letter(live_server, hygiene_app, queue_name):
    target = make(queue=queue_name, entity="order-77", exception_message="card processor down")
    noise = make(task_name="tests.deadletter.always_fails", queue=queue_name)
    staff("oncall", "view_deadletter", "replay_deadletter", "discard_deadletter")
    with chromium() as browser:
        operate(log_in(browser, live_server, "oncall"), target.pk, noise.pk)

    target.refresh_from_db()
    assert target.status == "replayed"
    [message] = fetch(hygiene_app, queue_name)
    assert message.headers["id"] == target.replayed_task_id


def operate(page: Any, target: int, noise: int) -> None:
    """Browser steps only: no ORM calls in here (see chromium())."""
    assert page.locator("#result_list tbody tr").count() == 2

    # Filter by task name from the sidebar.
    page.locator("#changelist-filter a", has_text="tests.deadletter.record").click()
    page.wait_for_url("**task=tests.deadletter.record**")
    assert page.locator("#result_list tbody tr").count() == 1
    assert row(page, noise).count() == 0

    # Open it: read-only detail with the traceback.
    row(page, target).locator("th a").click()
    page.wait_for_selector("pre.celery-hygiene-traceback")
    assert "ConnectionError: gateway down" in page.inner_text("pre.celery-hygiene-traceback")
    assert page.locator("input[name=_save]").count() == 0
    page.go_back()

    # Replay it through the action, with confirmation.
    row(page, target).locator("input[name=_selected_action]").check()
    page.select_option("select[name=action]", "replay_selected")
    page.click("button[name=index]")
    page.wait_for_selector("#confirm-action")
    assert "Replay 1 pending dead letter?" in page.inner_text("#confirm-summary")
    page.click("#confirm-action")
    page.wait_for_selector("ul.messagelist")
    assert "Replayed 1 dead letter." in page.inner_text("ul.messagelist")
    assert row(page, target).locator("td.field-status").inner_text() == "Replayed"


def test_view_only_staff_sees_no_replay_action(live_server):
    dl = make()
    staff("auditor", "view_deadletter")
    with chromium() as browser:
        page = log_in(browser, live_server, "auditor")
        assert row(page, dl.pk).count() == 0  # no checkboxes at all without actions
        assert page.locator("select[name=action]").count() == 0
        assert page.locator("#result_list tbody tr").count() == 1

        page.locator("#result_list tbody tr th a").first.click()
        page.wait_for_selector("pre.celery-hygiene-traceback")
        assert page.locator("#replay-this").count() == 0
    dl.refresh_from_db()
    assert dl.status == "pending"


# -- layout at 1,280 px, and "Replay all matching" (issue 10) -----------------------------------

SCREENSHOTS = os.environ.get("HYGIENE_SCREENSHOTS")  # a directory: keep screenshots for review
LONG_TRACEBACK = "".join(
    f'  File "/srv/app/shop/integrations/partners/webhooks/delivery_{i}.py", line {i}, in send\n'
    f"    response = session.post(url, json=payload, timeout=(3.05, 27), headers=headers)\n"
    for i in range(40)
)


def shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=os.path.join(SCREENSHOTS, f"{name}.png"), full_page=True)


def right_edge(page: Any, selector: str) -> float:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not rendered"
    return box["x"] + box["width"]


def test_columns_stay_on_screen_at_1280px(live_server):
    from django.utils import timezone

    from celery_hygiene.models import TaskDurationFlag

    for i in range(8):
        make(
            task_name=f"shop.integrations.partners.webhooks.deliver_partner_webhook_{i}",
            entity=f"partner-subscription-{i:06d}-eu-west",
            exception_type="requests.exceptions.ConnectTimeout",
            exception_message=(
                "HTTPSConnectionPool(host='hooks.partner.example.com', port=443): Max retries "
                "exceeded with url: /v2/events/order.updated (Caused by ConnectTimeoutError("
                "<urllib3.connection.HTTPSConnection object at 0x7f3c2a1b4d90>, 'Connection to "
                "hooks.partner.example.com timed out. (connect timeout=3.05)'))"
            ),
            traceback="Traceback (most recent call last):\n"
            + LONG_TRACEBACK
            + "requests.exceptions.ConnectTimeout: the last line, with the error",
        )
    make(
        exception_type="billiard.exceptions.TimeLimitExceeded",
        exception_message="TimeLimitExceeded(8.0,)",
        reason="timeout",
    )
    now = timezone.now()
    TaskDurationFlag.objects.create(
        task_name="shop.integrations.partners.webhooks.deliver_partner_webhook",
        task_id="5b0d3c1e-7f0e-4a55-9c1f-2b7e0f6d8a91",
        worker_hostname="celery@worker-payments-eu-west-1a-7f9c6d5b8-x2x9q",
        worker_pid=4242,
        started_at=now,
        threshold=0.5,
        flagged_at=now,
        over_by=0.5801541805267334,
        final_duration=1.0801541805267334,
    )
    # An operator: the action checkboxes take their column too.
    staff(
        "layout",
        "view_deadletter",
        "replay_deadletter",
        "discard_deadletter",
        "view_taskdurationflag",
    )
    with chromium() as browser:
        page = log_in(browser, live_server, "layout")
        page.set_viewport_size({"width": 1280, "height": 900})
        page.reload()
        page.wait_for_selector("#result_list")
        shot(page, "changelist-1280")
        # Within the window and not scrolled out of the list's own box either.
        visible = min(1280, right_edge(page, "#changelist .results"))
        for column in ("th.column-status", "th.column-failed_at", "td.field-status"):
            assert right_edge(page, column) <= visible, column
        # One line per row: the exception cell is as tall as a plain one.
        heights = page.eval_on_selector_all(
            "#result_list tbody tr", "rows => rows.map(r => r.getBoundingClientRect().height)"
        )
        assert max(heights) < 2 * min(heights), heights
        assert "UTC" in page.inner_text("th.column-failed_at")
        assert "hard time limit of 8 s exceeded" in page.inner_text("#result_list")
        assert page.locator("#incident-summary tr.incident").count() == 9  # 8 tasks + 1

        # The detail page shows the whole traceback: its last line is the error.
        page.locator("#result_list tbody tr th a").last.click()  # the oldest: a long traceback
        page.wait_for_selector("pre.celery-hygiene-traceback")
        shot(page, "detail-1280")
        traceback = page.locator("pre.celery-hygiene-traceback")
        assert traceback.inner_text().rstrip().endswith("the last line, with the error")
        clipped = traceback.evaluate(
            "el => el.scrollHeight > el.clientHeight + 1 || el.scrollWidth > el.clientWidth + 1"
        )
        assert not clipped
        assert right_edge(page, "pre.celery-hygiene-traceback") <= 1280
        assert "hard time limit" not in page.inner_text("#content")  # a ConnectTimeout
        last_line = page.get_by_text("the last line, with the error")
        last_line.scroll_into_view_if_needed()
        assert last_line.is_visible()

        # Slow runs: every number on screen, with units.
        page.goto(f"{live_server.url}/admin/celery_hygiene/taskdurationflag/")
        page.wait_for_selector("#result_list")
        shot(page, "slow-runs-1280")
        visible = min(1280, right_edge(page, "#changelist .results"))
        for column in (
            "th.column-over_by_display",
            "th.column-final_duration_display",
            "th.column-flagged",
        ):
            assert right_edge(page, column) <= visible, column
        cells = page.inner_text("#result_list tbody")
        assert "580 ms" in cells and "1.1 s" in cells and "0.5801541805267334" not in cells
        assert "UTC" in page.inner_text("th.column-flagged")


def test_replay_all_matching_a_filter_in_batches(live_server, hygiene_app, queue_name, monkeypatch):
    from django.contrib.admin.models import LogEntry
    from django.test import override_settings

    from celery_hygiene.ops import deadletter_actions

    picked = [
        make(queue=queue_name, exception_type="requests.exceptions.ConnectTimeout")
        for _ in range(7)
    ]
    others = [
        make(queue=queue_name, task_name="tests.deadletter.always_fails"),
        make(
            queue=queue_name,
            status="discarded",
            exception_type="requests.exceptions.ConnectTimeout",
        ),
    ]
    staff("oncall", "view_deadletter", "replay_deadletter")
    # 50 per second, 3 per request: three requests, the last one short.
    monkeypatch.setattr(deadletter_actions, "REPLAY_ALL_SECONDS_PER_REQUEST", 0.07)
    with override_settings(CELERY_HYGIENE={"REPLAY_RATE": 50}), chromium() as browser:
        page = log_in(browser, live_server, "oncall")
        # The incident summary links to the group's filtered list.
        group = page.locator("#incident-summary tr.incident").filter(has_text="ConnectTimeout")
        assert "7" in group.inner_text()  # 8 dead letters, 7 pending
        group.locator("a.incident-link").click()
        page.wait_for_url("**exception=requests.exceptions.ConnectTimeout**")
        assert page.locator("#result_list tbody tr").count() == 8

        page.click("#replay-all")
        page.wait_for_selector("#replay-all-confirm")
        shot(page, "replay-all-confirm")
        assert "Replay all 7 pending dead letters matching this filter?" in page.inner_text(
            "#replay-all-summary"
        )
        page.click("#replay-all-confirm")
        page.wait_for_selector("ul.messagelist", timeout=60_000)
        shot(page, "replay-all-done")
        assert "Replay all: 7 dead letters replayed." in page.inner_text("ul.messagelist")
        assert "exception=requests.exceptions.ConnectTimeout" in page.url

    statuses = dict(DeadLetter.objects.values_list("pk", "status"))
    assert {statuses[d.pk] for d in picked} == {"replayed"}
    assert [statuses[d.pk] for d in others] == ["pending", "discarded"]
    assert len(fetch(hygiene_app, queue_name)) == 7
    entries = LogEntry.objects.filter(object_id__in=[str(d.pk) for d in picked])
    assert entries.count() == 7
    assert {e.user.username for e in entries} == {"oncall"}
    assert all(e.change_message.startswith("Replay: sent as task") for e in entries)


def test_replay_all_needs_the_replay_permission(live_server):
    make()
    staff("auditor", "view_deadletter")
    with chromium() as browser:
        page = log_in(browser, live_server, "auditor")
        assert page.locator("#replay-all").count() == 0
        response = page.goto(f"{live_server.url}/admin/celery_hygiene/deadletter/replay-all/")
        assert response.status == 403
    assert DeadLetter.objects.get().status == "pending"
