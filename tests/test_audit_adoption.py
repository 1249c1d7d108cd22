"""Audit rules for a large existing codebase (issues 11 and 14): what the audit must see and say."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from django.core import checks
from django.test import override_settings

from celery_hygiene import HygieneTask, hygienic_task, idempotent_task
from celery_hygiene.ops.audit import audit
from celery_hygiene.task.discovery import import_task_modules
from celery_hygiene.task.routing import configure_queues


def make_app(**conf: Any) -> Celery:
    app = Celery("adopt", set_as_current=False)
    app.conf.update(
        {
            "broker_url": "amqp://guest:guest@127.0.0.1:5672//",
            "CELERY_DB_REUSE_MAX": 100,
            "task_time_limit": 60,
            **conf,
        }
    )
    return app


def _body() -> None: ...


def found(app: Celery, rule: str) -> list[checks.CheckMessage]:
    return [m for m in audit(app, "adopt.*") if m.id == rule]


def test_w013_lists_tasks_that_fail_without_a_dead_letter() -> None:
    app = make_app()
    for n in range(25):
        app.task(shared=False, name=f"adopt.legacy_{n:02}")(_body)

    @hygienic_task(app=app, shared=False, name="adopt.hygienic")
    def hygienic() -> None: ...

    [message] = found(app, "celery_hygiene.W013")
    assert message.msg.startswith("25 task(s) can fail without leaving a dead letter")
    assert "'adopt.legacy_00'" in message.msg and "and 5 more" in message.msg
    assert "adopt.hygienic" not in message.msg
    assert "task_cls" in message.hint


def test_w013_is_silent_when_hygiene_is_the_apps_default_task_class() -> None:
    app = make_app()
    app.Task = type("ProjectTask", (HygieneTask,), {"__module__": __name__})

    @app.task(shared=False, name="adopt.plain_but_hygienic")
    def plain() -> None: ...

    assert found(app, "celery_hygiene.W013") == []


def test_e021_says_the_routing_is_missing_and_names_the_queue() -> None:
    app = make_app(hygiene_queues={"fast": {"tasks": ["adopt.routed"]}})
    configure_queues(app)

    @app.task(shared=False, name="adopt.routed", base=HygieneTask)
    def routed() -> None: ...

    @app.task(shared=False, name="adopt.forgotten", base=HygieneTask)
    def forgotten() -> None: ...

    @app.task(shared=False, name="adopt.pinned", base=HygieneTask, queue="pinned")
    def pinned() -> None: ...

    messages = {m.obj: m for m in found(app, "celery_hygiene.E021")}
    assert set(messages) == {"celery", "pinned"}
    default = messages["celery"]
    assert "1 task(s) match no route ('adopt.forgotten')" in default.msg
    assert "default queue 'celery', which is not declared" in default.msg
    assert default.hint.startswith("The routing is missing, not the queue")
    assert "Add 'celery'" not in default.hint
    assert "task 'adopt.pinned' (queue='pinned')" in messages["pinned"].msg


def test_e022_when_the_declaration_was_not_applied() -> None:
    app = make_app(hygiene_queues={"fast": {"tasks": ["adopt.*"], "default": True}})
    configure_queues(app)
    assert found(app, "celery_hygiene.E022") == []
    app.conf.task_queues = []  # overwritten after configure_queues, e.g. by a later config line
    [message] = found(app, "celery_hygiene.E022")
    assert "queue(s) 'fast' are declared but not in the app's task_queues" in message.msg


def test_w022_short_task_names_in_patterns() -> None:
    app = make_app(hygiene_queues={"fast": {"tasks": ["send_email", "adopt.*"], "default": True}})

    @app.task(shared=False, name="adopt.tasks.send_email", base=HygieneTask)
    def send_email() -> None: ...

    [message] = found(app, "celery_hygiene.W022")
    assert "pattern 'send_email' matches no registered task" in message.msg
    assert "did you mean 'adopt.tasks.send_email'" in message.hint


def test_w051_hint_speaks_the_projects_namespace() -> None:
    app = Celery("adopt", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.task_time_limit = 60

    @idempotent_task(entity="key", app=app, shared=False, name="adopt.claiming")
    def claiming(key: str) -> None: ...

    [message] = found(app, "celery_hygiene.W051")
    assert (
        "In Django settings, next to your other CELERY_* settings: CELERY_DB_REUSE_MAX = 100"
        in (message.hint)
    )
    assert "app.conf" not in message.hint


def test_the_audit_sees_tasks_of_lazy_autodiscovery_with_a_related_name() -> None:
    app = Celery("adopt-autodiscover", set_as_current=False)
    app.autodiscover_tasks(packages=["tests.autodiscovered"], related_name="jobs")
    sys.modules.pop("tests.autodiscovered.jobs", None)
    import_task_modules(app)
    assert "tests.autodiscovered.jobs" in sys.modules
    assert "autodisc.nightly_export" in app.tasks


# For the system-check test below: a warning (W013), no error.
noisy = make_app(hygiene_queues={"fast": {"tasks": ["adopt.*"], "default": True}})
configure_queues(noisy)
noisy.task(shared=False, name="adopt.noisy")(_body)


def test_warnings_only_where_asked_for_not_before_every_command() -> None:
    def run(**kwargs: Any) -> set[str]:
        return {m.id for m in checks.run_checks(tags=["celery_hygiene"], **kwargs)}

    with override_settings(CELERY_HYGIENE={"CELERY_APP": "tests.test_audit_adoption.noisy"}):
        assert "celery_hygiene.W013" not in run()  # e.g. before `manage.py migrate`
        assert "celery_hygiene.W013" in run(include_deployment_checks=True)  # check --deploy
    with override_settings(
        CELERY_HYGIENE={
            "CELERY_APP": "tests.test_audit_adoption.noisy",
            "AUDIT_WARNINGS_EVERYWHERE": True,
        }
    ):
        assert "celery_hygiene.W013" in run()
        assert (
            sorted(
                m.id
                for m in checks.run_checks(tags=["celery_hygiene"], include_deployment_checks=True)
            ).count("celery_hygiene.W013")
            == 1
        )


# -- issue 23: fleet-wide hygiene and the audit ------------------------------------------------


def test_w010_flags_forever_retry_on_a_task_cls_task_with_the_cap_it_gets() -> None:
    app = make_app()
    app.Task = type("ProjectTask", (HygieneTask,), {"__module__": __name__})

    @app.task(shared=False, name="adopt.forever", autoretry_for=(KeyError,), max_retries=None)
    def forever() -> None: ...

    @app.task(shared=False, name="adopt.bounded", autoretry_for=(KeyError,), max_retries=3)
    def bounded() -> None: ...

    [message] = found(app, "celery_hygiene.W010")
    assert message.obj == "adopt.forever"
    assert "plain Celery retries it forever" in message.msg
    assert "stops after 5 attempts" in message.msg
    assert "max_retries=" in message.hint and "hygiene_retry=RetryPolicy" in message.hint


def test_w012_calls_a_singleton_a_singleton() -> None:
    from celery_hygiene import singleton_task

    app = make_app()

    @singleton_task(app=app, shared=False, name="adopt.sync")
    def sync() -> None: ...

    @idempotent_task(entity="key", app=app, shared=False, name="adopt.charge")
    def charge(key: str) -> None: ...

    messages = {m.obj: m.msg for m in found(app, "celery_hygiene.W012")}
    assert "is a singleton task" in messages["adopt.sync"]
    assert "idempotent" not in messages["adopt.sync"]
    assert "is idempotent" in messages["adopt.charge"]


def test_w051_names_the_setting_celerys_django_fixup_reads() -> None:
    from celery.fixups.django import DjangoWorkerFixup

    app = Celery("adopt", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.task_time_limit = 60

    @idempotent_task(entity="key", app=app, shared=False, name="adopt.claiming")
    def claiming(key: str) -> None: ...

    [message] = found(app, "celery_hygiene.W051")
    assert "CELERY_DB_REUSE_MAX = 100" in message.hint
    # The name in the hint is the one the installed Celery reads: followed, the warning goes.
    with override_settings(CELERY_DB_REUSE_MAX=100):
        fixed = Celery("adopt", set_as_current=False)
        fixed.config_from_object("django.conf:settings", namespace="CELERY")
        assert DjangoWorkerFixup(fixed).db_reuse_max == 100
        fixed.conf.task_time_limit = 60
        idempotent_task(entity="key", app=fixed, shared=False, name="adopt.claiming")(claiming.run)
        assert found(fixed, "celery_hygiene.W051") == []
