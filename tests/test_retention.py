"""purge_claims against real PostgreSQL (and the SQLite development path)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from celery_hygiene.failures.retention import purge_claims
from celery_hygiene.models import ClaimStatus, TaskClaim

DAY = dt.timedelta(days=1)


def make_claim(
    entity: str, status: str, completed_days_ago: float | None, using: str = "default"
) -> None:
    now = timezone.now()
    completed_at = None if completed_days_ago is None else now - completed_days_ago * DAY
    lease_expires_at = None if completed_days_ago is not None else now - 10 * DAY
    TaskClaim.objects.using(using).create(
        entity=entity,
        operation="op",
        task_name="t",
        status=status,
        fingerprint="f",
        owner_task_id=f"id-{entity}",
        completed_at=completed_at,
        lease_expires_at=lease_expires_at,
        # As in real rows: created before it completed (or before its lease ran out).
        created_at=(completed_at or lease_expires_at) - dt.timedelta(minutes=1),
    )


def remaining(using: str = "default") -> set[str]:
    return set(TaskClaim.objects.using(using).values_list("entity", flat=True))


@pytest.mark.django_db
def test_deletes_only_old_succeeded_claims_in_primary_key_batches():
    for i in range(5):
        make_claim(f"old-{i}", ClaimStatus.SUCCEEDED, 40)
    make_claim("recent", ClaimStatus.SUCCEEDED, 1)
    make_claim("dead", ClaimStatus.DEAD, 40)
    # A lease that expired long ago is still live work: a redelivery will take it over.
    make_claim("running", ClaimStatus.RUNNING, None)
    make_claim("retrying", ClaimStatus.RETRYING, None)
    progress: list[int] = []

    with CaptureQueriesContext(connections["default"]) as queries:
        deleted = purge_claims(older_than=30 * DAY, batch_size=2, on_batch=progress.append)

    assert deleted == 5
    assert progress == [2, 4, 5]
    assert remaining() == {"recent", "dead", "running", "retrying"}
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3
    # One statement per batch, bounded by LIMIT: no batch holds more than batch_size row locks.
    assert all("LIMIT 2" in sql for sql in deletes)


@pytest.mark.django_db
def test_dead_claims_only_when_asked():
    make_claim("dead", ClaimStatus.DEAD, 40)
    make_claim("ok", ClaimStatus.SUCCEEDED, 40)
    assert purge_claims(older_than=30 * DAY, statuses=[ClaimStatus.DEAD]) == 1
    assert remaining() == {"ok"}


@pytest.mark.django_db
def test_nothing_to_purge_is_one_cheap_statement():
    make_claim("recent", ClaimStatus.SUCCEEDED, 1)
    with CaptureQueriesContext(connections["default"]) as queries:
        assert purge_claims(older_than=30 * DAY) == 0
    assert len(queries.captured_queries) == 1
    assert remaining() == {"recent"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"older_than": 30}, "older_than must be a non-negative timedelta"),
        ({"older_than": -DAY}, "older_than must be a non-negative timedelta"),
        ({"older_than": DAY, "batch_size": 0}, "batch_size must be a positive integer"),
        ({"older_than": DAY, "statuses": ["running"]}, "live lease"),
        ({"older_than": DAY, "statuses": []}, "non-empty subset"),
    ],
)
def test_bad_arguments_are_refused_before_touching_the_database(kwargs, message):
    with pytest.raises(ValueError, match=message):
        purge_claims(**kwargs)


@pytest.mark.django_db(databases=["sqlite"])
def test_works_on_sqlite():
    for i in range(3):
        make_claim(f"old-{i}", ClaimStatus.SUCCEEDED, 40, using="sqlite")
    make_claim("recent", ClaimStatus.SUCCEEDED, 1, using="sqlite")
    assert purge_claims(older_than=30 * DAY, batch_size=2, using="sqlite") == 3
    assert remaining("sqlite") == {"recent"}


@pytest.mark.django_db(transaction=True)
def test_purge_claims_command_keeps_live_and_recent_claims():
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    from celery_hygiene.models import TaskClaim

    long_ago = timezone.now() - dt.timedelta(days=40)
    for entity, status in [("old-ok", "succeeded"), ("old-dead", "dead"), ("live", "running")]:
        TaskClaim.objects.create(
            entity=entity,
            operation="op",
            task_name="t",
            status=status,
            fingerprint="f",
            owner_task_id="x",
            completed_at=None if status == "running" else long_ago,
            created_at=long_ago - dt.timedelta(minutes=1),  # created before it completed
        )
    TaskClaim.objects.create(
        entity="recent",
        operation="op",
        task_name="t",
        status="succeeded",
        fingerprint="f",
        owner_task_id="x",
        completed_at=timezone.now(),
    )
    out = StringIO()
    call_command("taskhygiene", "purge-claims", "--older-than", "30d", stdout=out)
    assert "purged 1 claims" in out.getvalue()
    assert set(TaskClaim.objects.values_list("entity", flat=True)) == {"old-dead", "live", "recent"}
    call_command("taskhygiene", "purge-claims", "--older-than", "30d", "--include-dead", stdout=out)
    assert set(TaskClaim.objects.values_list("entity", flat=True)) == {"live", "recent"}
    with pytest.raises(CommandError, match="malformed duration"):
        call_command("taskhygiene", "purge-claims", "--older-than", "forever")
