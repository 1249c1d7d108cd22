"""Replay from a production-like process (issue 10, defect 1).

Under gunicorn, uWSGI or a plain ``get_wsgi_application()`` the system checks never run, and they
were what imported the task modules in ``runserver``: every admin replay was refused as "not
registered". Here the project is served by a real stdlib WSGI server in a subprocess whose Celery
app imports no task module up front (tests/lazy_celery_app.py); an operator logs in, replays, and
a real worker runs the replay. ``manage.py deadletter replay`` (which no longer runs the checks)
is run the same way.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection

from celery_hygiene.models import DeadLetter
from tests.conftest import wait_until
from tests.test_deadletter_cli import make
from tests.testapp.models import SideEffect
from tests.workers import REPO_ROOT

pytestmark = pytest.mark.worker


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_wsgi",
        "HYGIENE_TEST_DB_NAME": connection.settings_dict["NAME"],
        "PYTHONPATH": str(REPO_ROOT),
    }


@pytest.fixture
def wsgi_server(transactional_db: None) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.wsgi_server"],
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.match(r"listening on (\d+)", line)
        assert match, f"WSGI server did not start: {line}{process.stdout.read()}"
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        process.kill()
        process.wait(timeout=10)
        connection.close()


class Browser:
    """Just enough of a browser for Django's admin: cookies and the CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def csrf(self) -> str:
        return next(c.value for c in self.cookies if c.name == "csrftoken")

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=60) as response:
            return response.read().decode()

    def post(self, path: str, data: dict[str, Any]) -> str:
        body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": self.csrf()}, doseq=True)
        request = urllib.request.Request(
            self.base + path, data=body.encode(), headers={"Referer": self.base + path}
        )
        with self.opener.open(request, timeout=60) as response:
            return response.read().decode()

    def log_in(self, username: str) -> None:
        self.get("/admin/login/")
        page = self.post(
            "/admin/login/?next=/admin/",
            {"username": username, "password": "pw", "next": "/admin/"},
        )
        assert "Log out" in page or "logout" in page, page[-2000:]


def test_admin_replay_under_a_plain_wsgi_server_reaches_a_worker(wsgi_server, worker, queue_name):
    dl = make(queue=queue_name, args=["wsgi-1"], kwargs={})
    user = User.objects.create_user("oncall", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="celery_hygiene",
            codename__in=["view_deadletter", "replay_deadletter"],
        )
    )
    browser = Browser(wsgi_server)
    browser.log_in("oncall")
    page = browser.post(
        "/admin/celery_hygiene/deadletter/",
        {"action": "replay_selected", "_selected_action": [dl.pk], "post": "yes", "index": 0},
    )
    assert "not registered" not in page
    assert "Replayed 1 dead letter." in page

    # A real worker ran the replay with the original arguments.
    wait_until(lambda: SideEffect.objects.filter(entity="wsgi-1", kind="record").exists(), 60)
    dl.refresh_from_db()
    assert dl.status == "replayed"

    # Its page says what became of it (the result backend knows: this task keeps no claim),
    # and History says who replayed it.
    wait_until(lambda: "succeeded" in browser.get(f"/admin/celery_hygiene/deadletter/{dl.pk}/"))
    history = browser.get(f"/admin/celery_hygiene/deadletter/{dl.pk}/history/")
    assert f"Replay: sent as task {dl.replayed_task_id} (by oncall via admin)" in history


def test_deadletter_command_replays_without_system_checks(transactional_db, worker, queue_name):
    dl = make(queue=queue_name, args=["cli-1"], kwargs={})
    result = subprocess.run(
        [sys.executable, "-m", "django", "deadletter", "replay", str(dl.pk), "--by", "ann"],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"[1/1] replayed {dl.pk}" in output
    assert "System check" not in output and "WARNINGS" not in output
    wait_until(lambda: SideEffect.objects.filter(entity="cli-1", kind="record").exists(), 60)
    assert DeadLetter.objects.get(pk=dl.pk).status == "replayed"
    connection.close()
