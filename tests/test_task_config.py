"""How HygieneTask reads its configuration: leases, database routing, broker warnings."""

from __future__ import annotations

import logging

import pytest
from celery import Celery
from django.test import override_settings

from celery_hygiene import hygienic_task, idempotent_task
from celery_hygiene.claims import state as claims
from celery_hygiene.claims.state import ClaimKey, Outcome
from celery_hygiene.failures.retry import Decision
from celery_hygiene.models import TaskClaim
from celery_hygiene.task.failure import warn_visibility_timeout


def _task(app: Celery, **options):  # noqa: ANN202
    @idempotent_task(entity="key", app=app, name=f"cfg.t{len(app.tasks)}", **options)
    def task(key: str) -> str:
        return key

    return app.tasks[task.name]


def test_lease_is_explicit_else_the_setting_whatever_the_time_limits():
    """Leases are heartbeats: a time limit (even one given on the worker command line, which
    the task cannot see) no longer stretches how long a dead owner blocks its key."""
    app = Celery("cfg", set_as_current=False)
    assert _task(app, lease_seconds=42).hygiene_lease_seconds() == 42
    with override_settings(CELERY_HYGIENE={"DEFAULT_LEASE_SECONDS": 77}):
        assert _task(app).hygiene_lease_seconds() == 77
        assert _task(app, time_limit=100).hygiene_lease_seconds() == 77
    app.conf.task_time_limit = 600
    with override_settings(CELERY_HYGIENE={}):
        assert _task(app).hygiene_lease_seconds() == 60


class ReadsFromSQLite:
    """A router that would send reads of the claim table to another database."""

    def db_for_read(self, model, **hints):  # noqa: ANN001, ANN201
        return "sqlite" if model is TaskClaim else None

    def db_for_write(self, model, **hints):  # noqa: ANN001, ANN201
        return "default"


@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_claims_read_and_write_the_write_database_even_when_reads_are_routed_away():
    with override_settings(DATABASE_ROUTERS=[ReadsFromSQLite()]):
        using = claims.write_alias()
        assert using == "default"
        key = ClaimKey("routed", "op", "t", "fp")
        options = {"owner_worker": "w", "lease_seconds": 30, "using": using}
        first = claims.acquire(key, owner_task_id="a", **options)
        claims.complete(first.ticket, '"r"')
        again = claims.acquire(key, owner_task_id="b", **options)
    # Read from a replica-like alias, the duplicate would have looked like "in progress".
    assert again.outcome is Outcome.SUCCEEDED
    assert not TaskClaim.objects.using("sqlite").exists()


def test_countdown_beyond_redis_visibility_timeout_is_warned(caplog):
    app = Celery("vt", set_as_current=False, broker="redis://127.0.0.1:6379/0")
    app.conf.broker_transport_options = {"visibility_timeout": 600}

    @hygienic_task(app=app, name="vt.t")
    def t() -> None: ...

    with caplog.at_level(logging.WARNING, logger="celery_hygiene"):
        warn_visibility_timeout(app.tasks["vt.t"], 300)
        assert not caplog.records
        warn_visibility_timeout(app.tasks["vt.t"], 900)
    assert "retry_exceeds_visibility_timeout task=vt.t countdown=900 visibility_timeout=600" in (
        caplog.records[0].getMessage()
    )
    assert Decision(retry=True).countdown == 0.0


@pytest.mark.django_db(transaction=True)
def test_a_lost_pool_process_is_dead_lettered_only_if_its_claim_says_the_work_is_unfinished():
    """Celery may report a job as lost after its body finished; the claim knows better."""
    from billiard.exceptions import WorkerLostError

    from celery_hygiene.models import DeadLetter
    from tests.testapp import tasks

    task = tasks.charge_order
    spec = task.hygiene_idempotency
    done = task._claim_key(spec, (1, 100), {})
    lost = task._claim_key(spec, (2, 100), {})
    options = {"owner_worker": "w", "lease_seconds": 30, "using": "default"}
    claims.complete(claims.acquire(done, owner_task_id="t-done", **options).ticket, "1")
    claims.acquire(lost, owner_task_id="t-lost", **options)

    task.dead_letter_from_parent("t-done", WorkerLostError("gone"), [1, 100], {})
    task.dead_letter_from_parent("t-lost", WorkerLostError("gone"), [2, 100], {})

    assert list(DeadLetter.objects.values_list("task_id", "reason")) == [("t-lost", "worker_lost")]
    assert TaskClaim.objects.get(entity="1").status == "succeeded"
    assert TaskClaim.objects.get(entity="2").status == "dead"
