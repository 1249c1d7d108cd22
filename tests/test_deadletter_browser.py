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
