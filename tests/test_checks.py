"""The hygiene audit: each rule fires on the configuration it is about, and only there.

Every test builds its own small Celery app, so the findings do not depend on the suite's tasks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from celery_hygiene import HygieneTask, RetryPolicy, hygienic_task, idempotent_task
from celery_hygiene.ops.audit import audit
from tests.workers import REPO_ROOT


def make_app(**conf: Any) -> Celery:
    """Its tasks use shared=False: Celery's default (shared) would add them to every later app."""
    app = Celery("audit", set_as_current=False)
    app.conf.update(
        {
            "broker_url": "amqp://guest:guest@127.0.0.1:5672//",
            "CELERY_DB_REUSE_MAX": 100,
            **conf,
        }
    )
    return app


# W013 (tasks without a dead-letter destination) has its own tests below: these apps keep a plain
# @app.task on purpose, to show the other rules leave it alone.
OWN_TESTS = {"celery_hygiene.W013"}


def ids(app: Celery) -> list[str]:
    return sorted(m.id for m in audit(app, "audit.*") if m.id not in OWN_TESTS)


BOUNDED = {"bounded": {"tasks": ["audit.*"], "soft_time_limit": 30, "time_limit": 60}}


def clean_app(hygienic_plain: bool = False, **conf: Any) -> Celery:
    """No findings: a bounded queue, tasks with finite retries, acks as their idempotency wants.

    ``audit.plain`` is a plain Celery task (only W013 reports it) unless ``hygienic_plain``.
    """
    app = make_app(hygiene_queues=BOUNDED, task_default_queue="bounded", **conf)
    base = {"base": HygieneTask} if hygienic_plain else {}

    @app.task(shared=False, name="audit.plain", max_retries=3, **base)
    def plain() -> None: ...

    @idempotent_task(
        entity="order_id",
        app=app,
        shared=False,
        name="audit.charge",
        acks_late=True,
        reject_on_worker_lost=True,
    )
    def charge(order_id: int) -> None: ...

    @hygienic_task(
        app=app, shared=False, name="audit.report", retry=RetryPolicy(max_attempts=3, max_delay=60)
    )
    def report() -> None: ...

    return app


def test_a_clean_configuration_has_no_findings() -> None:
    assert ids(clean_app()) == []


def test_retry_forever() -> None:
    app = clean_app()

    @app.task(shared=False, name="audit.forever", max_retries=None, autoretry_for=(Exception,))
    def forever() -> None: ...

    messages = [m for m in audit(app, "audit.*") if m.id == "celery_hygiene.W010"]
    assert [m.obj for m in messages] == ["audit.forever"]
    assert "max_retries" in messages[0].hint


def test_acks_late_and_idempotency() -> None:
    app = clean_app()

    @app.task(shared=False, name="audit.late_plain", max_retries=3, acks_late=True)
    def late_plain() -> None: ...

    @idempotent_task(entity="key", app=app, shared=False, name="audit.early_idempotent")
    def early_idempotent(key: str) -> None: ...

    found = {(m.id, m.obj) for m in audit(app, "audit.*") if m.id not in OWN_TESTS}
    assert found == {
        ("celery_hygiene.W011", "audit.late_plain"),
        ("celery_hygiene.W012", "audit.early_idempotent"),
    }


def test_no_time_limit_anywhere() -> None:
    app = make_app(hygiene_queues={"fast": {"default": True}}, task_default_queue="fast")
    assert ids(app) == ["celery_hygiene.W020"]
    app.conf.task_time_limit = 300  # a global limit is a backstop too
    assert ids(app) == []


def test_routes_to_undeclared_queues_are_errors() -> None:
    app = clean_app(task_routes={"audit.special": {"queue": "nowhere"}, "audit.x": "elsewhere"})

    @app.task(shared=False, name="audit.pinned", max_retries=3, queue="pinned")
    def pinned() -> None: ...

    errors = [m for m in audit(app, "audit.*") if m.is_serious()]
    assert {(m.id, m.obj) for m in errors} == {
        ("celery_hygiene.E021", "nowhere"),
        ("celery_hygiene.E021", "elsewhere"),
        ("celery_hygiene.E021", "pinned"),
    }
    assert "(declared: bounded)" in errors[0].hint


def test_slow_queue_prefetch() -> None:
    queues = {**BOUNDED, "slow": {"tasks": ["audit.report"], "slow": True}}
    app = clean_app(worker_prefetch_multiplier=4)
    app.conf.hygiene_queues = queues
    assert ids(app) == ["celery_hygiene.W030"]
    app.conf.hygiene_queues = {**BOUNDED, "slow": {"slow": True, "prefetch_multiplier": 1}}
    assert ids(app) == []


def test_redis_visibility_timeout_shorter_than_a_time_limit_or_countdown() -> None:
    app = clean_app(broker_url="redis://127.0.0.1:6379/0")
    # Limits and countdowns (the default policy waits up to an hour) fit Redis's default 3600 s.
    assert ids(app) == []
    app.conf.broker_transport_options = {"visibility_timeout": 45}
    messages = [m for m in audit(app, "audit.*") if m.id == "celery_hygiene.W040"]
    assert len(messages) == 1
    # The worst offender is named: the default RetryPolicy waits up to an hour between tries.
    assert "task 'audit.charge' retry countdown is 3600s (and 3 more)" in messages[0].msg
    assert "'visibility_timeout': 4320" in messages[0].hint
    app.conf.broker_transport_options = {"visibility_timeout": 3600}
    app.conf.hygiene_queues = {"bounded": {"tasks": ["audit.*"], "time_limit": 7200}}
    messages = [m for m in audit(app, "audit.*") if m.id == "celery_hygiene.W040"]
    assert "queue 'bounded' time_limit is 7200s" in messages[0].msg
    assert ids(clean_app(broker_transport_options={"visibility_timeout": 45})) == []  # RabbitMQ


def test_redis_recovery_time_is_reported_from_the_settings_that_decide_it() -> None:
    short = {
        "DEFAULT_RETRY_POLICY": {"max_attempts": 3, "max_delay": 30},
        "REDIS_RESTORE_SECONDS": 10,
    }
    with override_settings(CELERY_HYGIENE=short):
        app = clean_app(broker_url="redis://127.0.0.1:6379/0")
        (message,) = [m for m in audit(app, "audit.*") if m.id == "celery_hygiene.W041"]
        assert "about 3610s after the kill" in message.msg  # default visibility timeout + scan
        app.conf.broker_transport_options = {"visibility_timeout": 300}
        assert "celery_hygiene.W041" not in ids(app)
        assert "celery_hygiene.W041" not in ids(clean_app())  # RabbitMQ redelivers at once


def test_conn_max_age_none_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(settings.DATABASES["default"], "CONN_MAX_AGE", None)
    assert ids(clean_app()) == ["celery_hygiene.W050"]


def test_invalid_queue_declaration_is_an_error() -> None:
    app = make_app(hygiene_queues={"fast": {"tasks": "audit.*"}}, task_time_limit=60)
    messages = audit(app, "audit.*")
    assert [m.id for m in messages] == ["celery_hygiene.E001"]
    assert "['fast']['tasks'] must be a list" in messages[0].msg


# Apps for the command tests, found through CELERY_HYGIENE["CELERY_APP"].
clean = clean_app(hygienic_plain=True)
broken = clean_app(task_routes={"audit.special": {"queue": "nowhere"}})


def test_check_command_passes_a_clean_app(capsys: pytest.CaptureFixture[str]) -> None:
    with override_settings(CELERY_HYGIENE={"CELERY_APP": "tests.test_checks.clean"}):
        call_command("taskhygiene", "check", "--task", "audit.*")
    assert "no issues found" in capsys.readouterr().out


def test_check_command_fails_on_errors() -> None:
    with (
        override_settings(CELERY_HYGIENE={"CELERY_APP": "tests.test_checks.broken"}),
        pytest.raises(CommandError) as excinfo,
    ):
        call_command("taskhygiene", "check", "--task", "audit.*")
    assert excinfo.value.returncode == 1


def test_check_command_reports_an_app_it_cannot_load() -> None:
    with (
        override_settings(CELERY_HYGIENE={"CELERY_APP": "tests.nowhere.app"}),
        pytest.raises(CommandError, match="1 hygiene issue"),
    ):
        call_command("taskhygiene", "check", "--fail-level", "ERROR")


def test_check_exit_status_gates_a_deploy() -> None:
    """The real CLI: warnings pass by default, and fail with --fail-level WARNING."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    command = [sys.executable, "-m", "django", "taskhygiene", "check"]
    passing = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert passing.returncode == 0, passing.stderr
    assert "celery_hygiene.W020" in passing.stdout
    failing = subprocess.run(
        [*command, "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert failing.returncode == 1
    assert "hygiene issue(s) at WARNING or above" in failing.stderr


def test_idempotent_tasks_without_connection_reuse() -> None:
    app = clean_app(CELERY_DB_REUSE_MAX=None)
    messages = [m for m in audit(app, "audit.*") if m.id == "celery_hygiene.W051"]
    assert [m.obj for m in messages] == ["audit.charge"]
    assert "CELERY_DB_REUSE_MAX" in messages[0].hint
