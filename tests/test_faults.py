"""Claims under real faults (issue 9): heartbeat leases, honest counting, nothing lost.

Every test runs real `celery worker` processes against the real broker and PostgreSQL and
injects the fault for real: a body outliving its lease, a pool process dying on every delivery,
a refused publish, the worker's own database connection cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from celery_hygiene.models import ClaimStatus, DeadLetter, OutboxMessage, TaskClaim
from tests.conftest import rabbitmq_policy, wait_until
from tests.testapp import tasks_faults as f
from tests.testapp import tasks_retry
from tests.testapp.models import Attempt, SideEffect

pytestmark = pytest.mark.worker


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_live_body_that_outlives_its_lease_keeps_its_claim(worker_factory, queue_name, pool):
    """Lease 2 s, body 6 s, a duplicate at 3 s: the heartbeat keeps the claim with the first
    run, so the body runs once and its completion is accepted."""
    worker = worker_factory(queue_name, pool=pool, concurrency=4)
    first = f.outlives_its_lease.apply_async(("long-1", 6.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="long-1").exists(), timeout=30)
    time.sleep(3.0)  # past the 2 s lease: without renewal the duplicate would take over
    duplicate = f.outlives_its_lease.apply_async(("long-1", 6.0), queue=queue_name)

    assert first.get(timeout=30) == "done:long-1"
    assert duplicate.get(timeout=30) == "done:long-1"
    assert Attempt.objects.filter(key="long-1").count() == 1
    assert SideEffect.objects.filter(entity="long-1", kind="long").count() == 1
    claim = TaskClaim.objects.get(entity="long-1")
    assert claim.status == ClaimStatus.SUCCEEDED and claim.attempts == 1
    assert "task_claim_lost" not in worker.log()


def test_a_dead_owners_claim_lapses_within_one_lease(worker_factory, queue_name):
    """The whole worker is SIGKILLed mid-body: nobody renews; the redelivery takes over once
    the (2 s) lease has run out and runs the body to completion, once more."""
    first_worker = worker_factory(queue_name, concurrency=1)
    result = f.outlives_its_lease.apply_async(("lapse-1", 4.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="lapse-1").exists(), timeout=30)
    time.sleep(2.5)  # renewed at least once by now
    first_worker.kill()
    killed_at = time.monotonic()
    worker_factory(queue_name, concurrency=1)
    assert result.get(timeout=60) == "done:lapse-1"
    assert time.monotonic() - killed_at < 30
    assert SideEffect.objects.filter(entity="lapse-1", kind="long").count() == 1
    assert TaskClaim.objects.get(entity="lapse-1").attempts == 2


def test_async_completion_survives_killing_the_worker_right_after_the_body(
    worker_factory, queue_name
):
    """ASYNC_COMPLETION: the completion's commit does not wait for the WAL flush, but once it
    returned the server has it. Killing the whole worker right after the body loses nothing: a
    duplicate gets the stored result and the body does not run again. (What it can lose is a
    PostgreSQL server crash in the ~200 ms after: docs/benchmarks.md, measured there.)"""
    worker = worker_factory(queue_name, concurrency=1, env={"HYGIENE_ASYNC_COMPLETION": "1"})
    first = f.outlives_its_lease.apply_async(("async-1", 0.1), queue=queue_name)
    assert first.get(timeout=30) == "done:async-1"
    worker.kill()
    claim = TaskClaim.objects.get(entity="async-1")
    assert claim.status == ClaimStatus.SUCCEEDED and claim.completed_at is not None
    assert "claim_complete_failed" not in worker.log()
    worker_factory(queue_name, concurrency=1, env={"HYGIENE_ASYNC_COMPLETION": "1"})
    duplicate = f.outlives_its_lease.apply_async(("async-1", 0.1), queue=queue_name)
    assert duplicate.get(timeout=30) == "done:async-1"
    assert SideEffect.objects.filter(entity="async-1", kind="long").count() == 1
    assert Attempt.objects.filter(key="async-1").count() == 1


def test_atomic_message_that_kills_its_worker_ends_as_worker_lost_after_max_attempts(
    worker, queue_name
):
    """The atomic claim rolls back with each crash; the redelivered runs are still counted.
    The first delivery's start is recorded nowhere (the happy path writes nothing), so it is
    not counted: max_attempts + 1 runs, never a run fewer than the policy owes."""
    result = f.atomic_poison.apply_async(("poison-1",), queue=queue_name)
    wait_until(lambda: DeadLetter.objects.filter(task_id=result.id).exists(), timeout=90)
    dead = DeadLetter.objects.get(task_id=result.id)
    assert dead.reason == "worker_lost"
    runs = Attempt.objects.filter(task="atomic_poison", key="poison-1").count()
    assert runs == 4  # the first delivery and max_attempts redelivered runs; then gave up
    claim = TaskClaim.objects.get(entity="poison-1")
    assert claim.status == ClaimStatus.DEAD
    time.sleep(2)
    assert Attempt.objects.filter(task="atomic_poison", key="poison-1").count() == runs


def test_copies_that_were_only_prefetched_by_killed_workers_cost_no_attempt(
    worker_factory, queue_name
):
    """A plain task fails on its first two runs (max_attempts=3). Each retry waits, prefetched
    but not started, on a worker whose only process is busy, and that worker is SIGKILLed: the
    redelivered retry must still get its own attempt (third run succeeds, no dead letter)."""
    task = f.fails_twice_behind_a_blocker
    result = task.apply_async(("prefetched-1", queue_name), queue=queue_name)
    received = f"{task.name}[{result.id}] received"
    for run in (1, 2):
        worker = worker_factory(queue_name, concurrency=1)
        wait_until(
            lambda run=run: SideEffect.objects.filter(kind=f"blocker-{run}").exists(), timeout=90
        )
        # The retry reached this worker (received, waiting for the busy process) before the kill.
        wait_until(lambda w=worker: w.log().count(received) >= 2)
        assert Attempt.objects.filter(key="prefetched-1").count() == run
        worker.kill()
    worker_factory(queue_name, concurrency=1)
    assert result.get(timeout=120) == "done:prefetched-1"
    assert Attempt.objects.filter(key="prefetched-1").count() == 3
    assert not DeadLetter.objects.exists()


def test_a_retry_whose_publish_fails_is_parked_and_resent_not_lost(
    worker_factory, queue_name, tmp_path: Path
):
    flag = tmp_path / "refuse-publish"
    flag.touch()
    worker = worker_factory(queue_name, env={"HYGIENE_FAIL_PUBLISH_FLAG": str(flag)})
    result = f.fails_once_then_succeeds.apply_async(("parked-1",), queue=queue_name)
    worker.wait_for_log("publish_failed_parked")
    parked = OutboxMessage.objects.get(task_id=result.id)
    assert parked.reason == "retry"
    time.sleep(2)  # the sweep keeps failing while the broker refuses; the row stays
    assert OutboxMessage.objects.filter(task_id=result.id).exists()

    flag.unlink()  # the broker is back
    assert result.get(timeout=30) == "done:parked-1"
    assert SideEffect.objects.filter(entity="parked-1", kind="second-try").count() == 1
    assert Attempt.objects.filter(key="parked-1").count() == 2
    assert not OutboxMessage.objects.exists()
    assert not DeadLetter.objects.exists()
    assert TaskClaim.objects.get(entity="parked-1").status == ClaimStatus.SUCCEEDED


@pytest.fixture
def full_queue(queue_name: str) -> Iterator[Callable[[], None]]:
    """A RabbitMQ policy caps the test queue at one ready message and refuses publishes past
    it (``overflow: reject-publish``): a publisher with ``confirm_publish`` gets a nack, the
    way a broker at its queue-length limit answers in production. Returns a function that
    fills the queue (one message the worker has not taken yet)."""
    from tests.celery_app import app

    def ready() -> int:
        with app.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(queue_name, passive=True).message_count)

    def fill() -> None:
        f.record_handover.apply_async(("filler",), queue=queue_name)
        wait_until(lambda: ready() == 1, timeout=10)

    with rabbitmq_policy(queue_name, {"max-length": 1, "overflow": "reject-publish"}):
        yield fill


@pytest.mark.rabbitmq
def test_a_bodys_own_retry_refused_by_the_broker_is_parked_not_lost(
    worker_factory, queue_name, full_queue
):
    """``raise self.retry()`` while the broker refuses the retry's publish (a real nack): the
    retry is parked in the outbox and re-sent; the message keeps the request's headers."""
    from celery_hygiene.failures.deadletters import REPLAY_OF_HEADER

    worker = worker_factory(queue_name, concurrency=1, env={"HYGIENE_CONFIRM_PUBLISH": "1"})
    result = f.retries_itself.apply_async(
        ("refused-1",), queue=queue_name, headers={REPLAY_OF_HEADER: 7}
    )
    wait_until(lambda: Attempt.objects.filter(key="refused-1").exists(), timeout=30)
    full_queue()  # the running message is unacknowledged (acks_late): the filler waits
    SideEffect.objects.create(entity="refused-1", kind="go")
    worker.wait_for_log("publish_failed_parked")
    assert result.get(timeout=60) == "done:refused-1"
    assert Attempt.objects.filter(key="refused-1").count() == 2
    headers = SideEffect.objects.get(entity="refused-1", kind="second-run").payload["headers"]
    assert headers[REPLAY_OF_HEADER] == 7
    assert {"celery_hygiene_first_failed_at", "celery_hygiene_first_started_at"} <= set(headers)
    claim = TaskClaim.objects.get(entity="refused-1")
    assert (claim.status, claim.attempts) == (ClaimStatus.SUCCEEDED, 2)
    assert not DeadLetter.objects.exists()
    wait_until(lambda: not OutboxMessage.objects.exists(), timeout=10)


def test_a_bodys_own_retry_keeps_the_requests_headers(worker, queue_name):
    """The replay origin and the policy's deadline headers survive ``raise self.retry()``."""
    from celery_hygiene.failures.deadletters import REPLAY_OF_HEADER

    SideEffect.objects.create(entity="headers-1", kind="go")
    result = f.retries_itself.apply_async(
        ("headers-1",), queue=queue_name, headers={REPLAY_OF_HEADER: 7}
    )
    assert result.get(timeout=60) == "done:headers-1"
    headers = SideEffect.objects.get(entity="headers-1", kind="second-run").payload["headers"]
    assert headers[REPLAY_OF_HEADER] == 7
    assert {"celery_hygiene_first_failed_at", "celery_hygiene_first_started_at"} <= set(headers)
    assert headers["celery_hygiene_retry_token"] == 1


def test_an_outbox_row_sent_twice_runs_a_claimless_task_once(worker_factory, queue_name):
    """A sweep publishes a parked message, then its writes never commit (its connection
    dropped): the row is still there and the next sweep sends it again. Two copies reach the
    worker; the body runs once."""
    from django.db import transaction

    from celery_hygiene.failures import outbox
    from tests.celery_app import app

    sig = f.counts_its_runs.signature(("twice-1",), queue=queue_name, countdown=0)
    outbox.park(sig, reason="retry", error=OSError("broker away"))
    with transaction.atomic():
        assert outbox.resend_due(app) == 1
        transaction.set_rollback(True)  # ... and nothing the sweep wrote commits
    assert outbox.resend_due(app) == 1  # the row was still due: a second copy
    worker = worker_factory(queue_name)
    worker.wait_for_log("outbox_copy_skipped task=tests.testapp.tasks_faults.counts_its_runs")
    wait_until(lambda: Attempt.objects.filter(key="twice-1").exists(), timeout=30)
    assert Attempt.objects.filter(key="twice-1").count() == 1
    assert not OutboxMessage.objects.exists()
    assert not DeadLetter.objects.exists()


def test_the_main_process_reconnects_after_its_connection_is_cut(worker, queue_name):
    """pg_terminate_backend of every worker connection, then a hard time limit: the main
    process still closes the claim and stores the dead letter."""
    warmup = tasks_retry.exceeds_hard_limit.apply_async(("warm-1",), queue=queue_name)
    wait_until(lambda: DeadLetter.objects.filter(task_id=warmup.id).exists(), timeout=60)
    _terminate_other_backends()

    result = tasks_retry.exceeds_hard_limit.apply_async(("after-cut",), queue=queue_name)
    wait_until(lambda: DeadLetter.objects.filter(task_id=result.id).exists(), timeout=60)
    dead = DeadLetter.objects.get(task_id=result.id)
    assert dead.reason == "timeout"
    assert TaskClaim.objects.get(entity="after-cut").status == ClaimStatus.DEAD
    assert "deadletter_parent_failed" not in worker.log()


def test_replace_records_that_the_body_ran(worker, queue_name):
    """self.replace() raises Ignore: the claim must not be released for a duplicate to rerun."""
    f.hands_over.apply_async(("handover-1",), queue=queue_name)
    try:
        wait_until(
            lambda: SideEffect.objects.filter(entity="handover-1", kind="handover").exists(),
            timeout=30,
        )
    except AssertionError:
        raise AssertionError(worker.log()[-4000:]) from None
    f.hands_over.apply_async(("handover-1",), queue=queue_name).get(timeout=30)
    assert Attempt.objects.filter(task="hands_over", key="handover-1").count() == 1
    claim = TaskClaim.objects.get(entity="handover-1", operation=f.hands_over.name)
    assert claim.status == ClaimStatus.SUCCEEDED


def _terminate_other_backends() -> None:
    name = connection.settings_dict["NAME"]
    connection.close()
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as pg:
        killed = pg.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        ).fetchone()
    assert killed and killed[0] >= 1


def test_taskhygiene_resend_publishes_parked_messages_once(
    transactional_db: None, queue_name: str
) -> None:
    from django.core.management import call_command

    from celery_hygiene.failures import outbox
    from tests.celery_app import app

    sig = f.fails_once_then_succeeds.signature(("outbox-1",), queue=queue_name, countdown=0)
    outbox.park(sig, reason="retry", error=OSError("broker away"))
    call_command("taskhygiene", "claims", "--stale")  # mentions the waiting message
    call_command("taskhygiene", "resend")
    assert outbox.waiting() == 0  # sent; the row waits for its task to take it
    with app.connection_for_write() as conn:
        message = wait_until(lambda: conn.default_channel.basic_get(queue_name, no_ack=True))
        assert message.headers["task"] == f.fails_once_then_succeeds.name
        assert conn.default_channel.basic_get(queue_name, no_ack=True) is None  # sent once


def test_completion_rides_out_a_database_outage_longer_than_a_few_seconds(
    worker_factory, queue_name
):
    """The body's effect is out; PostgreSQL refuses connections for 6 s; the completion is
    retried through it (DB_RETRY_SECONDS), so a later duplicate does not run the body again."""
    worker = worker_factory(queue_name, env={"HYGIENE_DB_RETRY_SECONDS": "30"})
    result = f.outage_before_completion.apply_async(("outage-1", 6.0), queue=queue_name)
    assert result.get(timeout=60) == "done:outage-1"
    connection.close()
    claim = TaskClaim.objects.get(entity="outage-1")
    assert claim.status == ClaimStatus.SUCCEEDED
    # Retried by the library, or (behind PgBouncer) queued by PgBouncer until the server is back.
    assert "claim_complete_failed" not in worker.log()
    f.outage_before_completion.apply_async(("outage-1", 0.1), queue=queue_name).get(timeout=30)
    assert SideEffect.objects.filter(entity="outage-1", kind="before-outage").count() == 1


def test_a_deferred_copy_does_not_inherit_the_originals_expiry(worker_factory, queue_name):
    """The only message left for a key is a waiting duplicate with an `expires`; the owner
    dies (acks early: its message is gone). The copy must still take over and do the work."""
    from tests.testapp import tasks

    other_queue = f"{queue_name}-b"
    first_worker = worker_factory(queue_name, concurrency=1)
    tasks.early_ack.apply_async(("expiry-1", 30.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="expiry-1").exists(), timeout=30)
    second_worker = worker_factory(other_queue, concurrency=2)  # its own queue: no race
    duplicate = tasks.early_ack.apply_async(("expiry-1", 30.0), queue=other_queue, expires=3)
    second_worker.wait_for_log("task_claim_busy")  # deferred: its copy is the only message
    first_worker.kill()
    assert duplicate.get(timeout=60) == "done:expiry-1"
    assert SideEffect.objects.filter(entity="expiry-1", kind="early_ack").count() == 1
    from tests.celery_app import app
    from tests.conftest import delete_queue

    delete_queue(app, other_queue)
