"""The project's own tests, as its team writes them: eager mode, the project's test settings."""

import pytest
from config.celery import app
from config.tasks_base import AuditedTask
from django.core import checks
from django.core.management import call_command
from shop import tasks
from shop.models import Charge, Visit

from celery_hygiene import HygieneTask


@pytest.mark.django_db
def test_a_plain_task_runs_eagerly():
    assert tasks.record_visit.delay("/home").get() == "/home"
    assert Visit.objects.filter(page="/home").count() == 1


@pytest.mark.django_db
def test_an_idempotent_task_charges_once_even_in_eager_mode():
    tasks.charge_order.delay(7, 500)
    tasks.charge_order.delay(7, 500)
    assert Charge.objects.filter(order_id=7).count() == 1


def test_every_task_of_the_app_is_hygienic():
    app.loader.import_default_modules()
    shop_tasks = {name: task for name, task in app.tasks.items() if name.startswith("shop.")}
    assert len(shop_tasks) == 6
    assert all(isinstance(task, HygieneTask) for task in shop_tasks.values())
    # Our decorators (bound with for_app) keep the project's task_cls too.
    assert all(isinstance(task, AuditedTask) for task in shop_tasks.values())
    assert not tasks.record_visit.typing  # the project's own base class is still there


def test_task_cls_tasks_keep_their_celery_retries_and_decorators_the_default():
    assert tasks.import_feed.hygiene_retry is None
    assert tasks.import_feed.hygiene_policy().retry_on == ()  # never retried, still does not
    partner = tasks.notify_partner.hygiene_policy()
    assert (partner.max_attempts, partner.retry_on) == (2, (OSError,))
    assert tasks.charge_order.hygiene_policy().max_attempts == 3  # DEFAULT_RETRY_POLICY


def test_celery_retry_options_became_a_policy():
    policy = tasks.sync_stock.hygiene_policy()
    assert policy.max_attempts == 3
    assert [policy.countdown(n) for n in (1, 2, 3)] == [1, 1, 1]  # 1, 2, 4 capped at 1


def test_the_periodic_task_is_registered_under_its_scheduled_name():
    entry = app.conf.beat_schedule["nightly-cleanup"]
    assert entry["task"] in app.tasks


def test_queues_are_configured_from_the_split_settings():
    assert app.conf.task_default_queue in app.conf.hygiene_queues
    route = app.amqp.router.route({}, "shop.tasks.record_visit")
    assert route["queue"].name == app.conf.task_default_queue


def test_system_checks_and_the_audit_are_clean(capsys):
    assert [m for m in checks.run_checks() if m.is_serious()] == []
    call_command("taskhygiene", "check", "--fail-level", "WARNING")
    assert "no issues found" in capsys.readouterr().out
