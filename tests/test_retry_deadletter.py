"""Bounded retries and dead letters through a real broker and worker (issue 3)."""

from __future__ import annotations

import json
import os
import time

import psycopg
import pytest
from django.db import connection

from celery_hygiene.models import ClaimStatus, DeadLetter, DeadLetterStatus, TaskClaim
from tests.conftest import rabbitmq_policy, wait_until
from tests.testapp import tasks_retry as t
from tests.testapp.models import Attempt, SideEffect

pytestmark = pytest.mark.worker


def attempts(task: str, key: str) -> int:
    return Attempt.objects.filter(task=task, key=key).count()


def dead_letter_for(task_id: str, timeout: float = 30) -> DeadLetter:
    wait_until(lambda: DeadLetter.objects.filter(task_id=task_id).exists(), timeout=timeout)
    return DeadLetter.objects.get(task_id=task_id)


def test_always_failing_task_runs_max_attempts_then_one_complete_dead_letter(worker, queue_name):
    payload = {"sku": "A-1", "qty": 2, "note": "ünïcode"}
    result = t.always_times_out.apply_async(("k1",), {"payload": payload}, queue=queue_name)
    with pytest.raises(TimeoutError):
        result.get(timeout=30)
    dead = dead_letter_for(result.id)

    assert attempts("always_times_out", "k1") == 4
    assert DeadLetter.objects.filter(task_id=result.id).count() == 1
    assert dead.task_name == "tests.testapp.tasks_retry.always_times_out"
    assert dead.args == ["k1"] and dead.kwargs == {"payload": payload}
    assert dead.queue == queue_name and dead.routing_key == queue_name
    assert dead.exception_type == "TimeoutError"
    assert dead.exception_message == "upstream timed out for k1"
    assert "raise TimeoutError" in dead.traceback
    assert dead.attempts == 4
    assert dead.reason == "exhausted"
    assert dead.first_failed_at < dead.last_failed_at
    assert dead.worker_hostname == worker.hostname
    assert dead.headers["root_id"] == result.id
    assert dead.status == DeadLetterStatus.PENDING
    assert not dead.payload_truncated
    assert "task_dead_lettered task=tests.testapp.tasks_retry.always_times_out" in worker.log()
    assert "attempts=4" in worker.log()
    # Each retry and the dead-lettering fired our signals, in the worker.
    retries = SideEffect.objects.filter(entity=result.id, kind="signal:retry")
    assert sorted(r.payload["attempt"] for r in retries) == [1, 2, 3]
    assert all(0.2 <= r.payload["countdown"] <= 0.4 for r in retries)
    assert SideEffect.objects.get(entity=result.id, kind="signal:dead").payload == {
        "dead_letter": dead.pk
    }


def test_give_up_error_is_dead_lettered_on_first_failure_and_claim_is_dead(worker, queue_name):
    result = t.charge_with_policy.apply_async((501, "invalid"), queue=queue_name)
    with pytest.raises(ValueError):
        result.get(timeout=30)
    dead = dead_letter_for(result.id)
    assert attempts("charge_with_policy", "501") == 1
    assert (dead.reason, dead.attempts, dead.exception_type) == ("gave_up", 1, "ValueError")
    assert (dead.entity, dead.operation) == ("501", "charge-retry")

    claim = TaskClaim.objects.get(entity="501", operation="charge-retry")
    assert claim.status == ClaimStatus.DEAD
    # A duplicate does not silently run the dead work again.
    duplicate = t.charge_with_policy.apply_async((501, "invalid"), queue=queue_name)
    assert duplicate.get(timeout=30) is None
    assert attempts("charge_with_policy", "501") == 1


def test_error_outside_retry_on_is_final(worker, queue_name):
    result = t.not_retryable.apply_async(("nr",), queue=queue_name)
    with pytest.raises(RuntimeError):
        result.get(timeout=30)
    assert dead_letter_for(result.id).reason == "gave_up"
    assert attempts("not_retryable", "nr") == 1


def test_idempotent_exhaustion_counts_attempts_on_the_claim(worker, queue_name):
    result = t.charge_with_policy.apply_async((502, "always"), queue=queue_name)
    with pytest.raises(ConnectionError):
        result.get(timeout=30)
    dead = dead_letter_for(result.id)
    assert attempts("charge_with_policy", "502") == 3
    assert (dead.reason, dead.attempts) == ("exhausted", 3)
    assert TaskClaim.objects.get(entity="502").status == ClaimStatus.DEAD


def test_fails_twice_then_succeeds_leaves_no_dead_letter(worker, queue_name):
    result = t.charge_with_policy.apply_async((503, "flaky"), queue=queue_name)
    assert result.get(timeout=30) == "charged:503"
    assert attempts("charge_with_policy", "503") == 3
    assert SideEffect.objects.filter(entity="503", kind="charge-retry").count() == 1
    assert not DeadLetter.objects.exists()
    claim = TaskClaim.objects.get(entity="503")
    assert (claim.status, claim.attempts) == (ClaimStatus.SUCCEEDED, 3)


def test_total_elapsed_bound_stops_retries_before_max_attempts(worker, queue_name):
    result = t.deadline_bound.apply_async(("dl",), queue=queue_name)
    with pytest.raises(ConnectionError):
        result.get(timeout=30)
    dead = dead_letter_for(result.id)
    assert dead.reason == "deadline"
    assert 2 <= dead.attempts < 10


def test_non_json_payload_is_stored_as_repr_and_flagged(worker_factory, queue_name):
    # Pickle is only accepted by this test's own worker (Celery refuses it as root otherwise).
    worker_factory(queue_name, env={"HYGIENE_ACCEPT_PICKLE": "1", "C_FORCE_ROOT": "1"})
    result = t.odd_payload.apply_async(
        ("odd",), {"blob": {1, 2, 3}, "api_key": "k-odd-1"}, queue=queue_name
    )
    with pytest.raises(ValueError):
        result.get(timeout=30)
    dead = dead_letter_for(result.id)
    assert dead.payload_truncated
    assert "repr" in dead.payload_note
    assert "{1, 2, 3}" in json.dumps(dead.kwargs)
    # Stored as a repr() string, the secret is still masked on screen.
    shown = _shown(dead)
    assert "{1, 2, 3}" in shown and "k-odd-1" not in shown


def test_huge_payload_is_truncated_with_a_marker_and_flagged(worker, queue_name):
    blob = "x" * 400_000  # over the default 256 KiB PAYLOAD_MAX_BYTES
    result = t.huge_payload.apply_async(
        ("big", blob), {"client_secret": "k-huge-1"}, queue=queue_name
    )
    with pytest.raises(ValueError):
        result.get(timeout=30)
    dead = dead_letter_for(result.id)
    assert dead.payload_truncated and "exceeds PAYLOAD_MAX_BYTES" in dead.payload_note
    assert dead.args[0] == "<truncated>"
    assert len(json.dumps(dead.args)) + len(json.dumps(dead.kwargs)) < 300_000
    # Stored as truncated JSON text, the secret is still masked on screen.
    assert "k-huge-1" in json.dumps(dead.kwargs)
    assert "k-huge-1" not in _shown(dead)


def _shown(dead: DeadLetter) -> str:
    """What an operator sees: ``deadletter show --json``."""
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("deadletter", "show", str(dead.pk), "--json", stdout=out)
    return out.getvalue()


def test_message_that_keeps_killing_its_worker_is_dead_lettered_after_the_cap(worker, queue_name):
    plain = t.kills_its_worker_plain.apply_async(("boom",), queue=queue_name)
    dead = dead_letter_for(plain.id, timeout=60)
    assert dead.reason == "worker_lost"
    # The first delivery records nothing (the happy path writes nothing), so it is not counted:
    # max_attempts + 1 runs, then the next delivery is refused before running.
    assert attempts("kills_its_worker_plain", "boom") == 4
    assert dead.attempts == 4

    keyed = t.kills_its_worker_idempotent.apply_async(("boom-2",), queue=queue_name)
    dead = dead_letter_for(keyed.id, timeout=60)
    assert dead.reason == "worker_lost"
    assert attempts("kills_its_worker_idempotent", "boom-2") == 3
    assert TaskClaim.objects.get(entity="boom-2").status == ClaimStatus.DEAD


def test_hard_time_limit_kill_is_dead_lettered_from_the_parent(worker, queue_name):
    result = t.exceeds_hard_limit.apply_async(("slow-1",), queue=queue_name)
    dead = dead_letter_for(result.id, timeout=30)
    assert dead.reason == "timeout"
    assert dead.exception_type == "billiard.exceptions.TimeLimitExceeded"
    assert dead.args == ["slow-1"] and dead.entity == "slow-1"
    assert TaskClaim.objects.get(entity="slow-1").status == ClaimStatus.DEAD
    wait_until(lambda: "Hard time limit" in worker.log())
    assert DeadLetter.objects.filter(task_id=result.id).count() == 1


def test_soft_time_limit_is_retried_then_dead_lettered_as_timeout(worker, queue_name):
    result = t.exceeds_soft_limit.apply_async(("soft-1",), queue=queue_name)
    dead = dead_letter_for(result.id, timeout=30)
    assert dead.reason == "timeout"
    assert dead.exception_type == "billiard.exceptions.SoftTimeLimitExceeded"
    assert attempts("exceeds_soft_limit", "soft-1") == 2


@pytest.fixture
def parking_queue(queue_name):
    """A RabbitMQ policy attaches a dead-letter exchange to the test queue (as documented)."""
    exchange, parked = f"{queue_name}-dlx", f"{queue_name}-parked"
    from tests.celery_app import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.exchange_declare(exchange, "fanout", durable=True)
        channel.queue_declare(parked, durable=True)
        channel.queue_bind(parked, exchange, "")
    with rabbitmq_policy(queue_name, {"dead-letter-exchange": exchange}):
        yield parked
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(parked)
        conn.default_channel.exchange_delete(exchange)


def _set_db_connections(allowed: bool) -> None:
    name = connection.settings_dict["NAME"]
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as pg:
        pg.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
            )


@pytest.mark.rabbitmq
def test_database_down_during_dead_letter_write_rejects_to_broker_and_logs_payload(
    worker_factory, queue_name, parking_queue
):
    """DEADLETTER_FALLBACK="reject": the message goes to the queue's dead-letter exchange."""
    from tests.celery_app import app

    worker = worker_factory(queue_name, env={"HYGIENE_DEADLETTER_FALLBACK": "reject"})

    connection.close()
    _set_db_connections(False)
    try:
        result = t.fails_while_db_is_down.apply_async(("db-down",), queue=queue_name)
        worker.wait_for_log("deadletter_write_failed", timeout=60)
        with app.connection_for_write() as conn:
            message = wait_until(lambda: conn.default_channel.basic_get(parking_queue, no_ack=True))
    finally:
        _set_db_connections(True)
        connection.close()

    # The broker kept the message (via the dead-letter exchange), not acknowledged into the void.
    assert message.headers["id"] == result.id
    assert json.loads(message.body)[0] == ["db-down"]
    log = worker.log()
    # Bounded retries before giving up (behind PgBouncer each try first waits in its queue).
    assert log.count("deadletter_write_retry") >= (
        1 if os.environ.get("HYGIENE_WORKER_PGPORT") else 4
    )
    assert '\\"args\\": [\\"db-down\\"]' in log  # the full payload is in the ERROR line
    assert not DeadLetter.objects.exists()


def test_database_down_during_dead_letter_write_keeps_the_message_until_it_answers(
    worker, queue_name
):
    """Default fallback (requeue, works without a dead-letter exchange): nothing is dropped;
    once the database answers, exactly one dead letter is stored."""
    connection.close()
    _set_db_connections(False)
    try:
        result = t.fails_while_db_is_down.apply_async(
            ("db-held",), {"password": "pw-held-1"}, queue=queue_name
        )
        worker.wait_for_log("deadletter_write_failed", timeout=60)
        wait_until(lambda: worker.log().count("deadletter_write_failed") >= 2, timeout=60)
    finally:
        _set_db_connections(True)
        connection.close()
    dead = dead_letter_for(result.id, timeout=60)
    assert dead.args == ["db-held"]
    log = worker.log()
    assert '\\"args\\": [\\"db-held\\"]' in log  # the ERROR line carries the payload...
    assert "pw-held-1" not in log  # ... with its secrets masked
    assert DeadLetter.objects.filter(task_id=result.id).count() == 1


@pytest.mark.parametrize(
    "task", [t.claim_needs_the_database, t.claim_needs_the_database_atomic], ids=["plain", "atomic"]
)
def test_database_down_at_claim_time_is_retried_not_lost(worker, queue_name, task):
    connection.close()
    _set_db_connections(False)
    try:
        result = task.apply_async(("db-claim",), queue=queue_name)
        # Longer than the body policy would ever allow (2 attempts, OperationalError not in
        # retry_on): the claim's own budget carries the message.
        for _ in range(3):
            worker.wait_for_log(f"task_claim_unavailable task={task.name}")
        wait_until(lambda: worker.log().count("task_claim_unavailable") >= 3, timeout=30)
    finally:
        _set_db_connections(True)
        connection.close()
    assert result.get(timeout=30) == "claimed:db-claim"
    assert "task_retry_scheduled" not in worker.log()
    assert SideEffect.objects.filter(entity="db-claim", kind="claim-db").count() == 1
    claim = TaskClaim.objects.get(entity="db-claim")
    assert claim.attempts == 1  # the outage cost the body none of its attempts
    assert not DeadLetter.objects.exists()


def test_a_short_outage_long_after_an_old_one_gets_the_whole_claim_budget(
    worker_factory, queue_name
):
    """A message waits out a database outage at claim time, runs, fails, and its retry meets a
    4 s blip more than CLAIM_RETRY_SECONDS (5 s here) after the old outage began: the retry
    waits the blip out (the old wait is over), it is not dead-lettered at once."""
    worker = worker_factory(queue_name, env={"HYGIENE_CLAIM_RETRY_SECONDS": "5"})
    connection.close()
    _set_db_connections(False)
    try:
        result = t.blip_on_retry.apply_async(("blip-1", 6.0), queue=queue_name)
        worker.wait_for_log(f"task_claim_unavailable task={t.blip_on_retry.name}")
    finally:
        _set_db_connections(True)
        connection.close()
    assert result.get(timeout=90) == "done:blip-1"
    assert worker.log().count(f"task_claim_unavailable task={t.blip_on_retry.name}") >= 2
    assert SideEffect.objects.filter(entity="blip-1", kind="blip-retry").count() == 1
    claim = TaskClaim.objects.get(entity="blip-1")
    assert (claim.status, claim.attempts) == (ClaimStatus.SUCCEEDED, 2)
    assert not DeadLetter.objects.exists()


def test_a_deferred_duplicate_gets_the_whole_claim_budget_for_a_later_outage(
    worker_factory, queue_name
):
    """A duplicate first waits out a database outage at claim time, then waits (deferred) for
    the owner's long body. A 3 s blip more than CLAIM_RETRY_SECONDS (5 s) after the first outage
    began must not dead-letter it: the deferral ended that wait."""
    worker = worker_factory(queue_name, env={"HYGIENE_CLAIM_RETRY_SECONDS": "5"})
    owner = t.holds_its_key.apply_async(("defer-1", 20.0), queue=queue_name)
    worker.wait_for_log(f"{t.holds_its_key.name}[{owner.id}] received")
    time.sleep(1)  # the owner holds the claim and sleeps (no database work)
    connection.close()
    _set_db_connections(False)
    outage_began = time.monotonic()
    try:
        duplicate = t.holds_its_key.apply_async(("defer-1", 20.0), queue=queue_name)
        worker.wait_for_log(f"task_claim_unavailable task={t.holds_its_key.name} id={duplicate.id}")
    finally:
        _set_db_connections(True)
        connection.close()
    worker.wait_for_log(f"task_claim_busy task={t.holds_its_key.name} id={duplicate.id}")
    time.sleep(max(0.0, outage_began + 6 - time.monotonic()))
    _set_db_connections(False)
    try:
        time.sleep(3)  # the deferred duplicate looks again at least once in here
    finally:
        _set_db_connections(True)
        connection.close()
    assert owner.get(timeout=60) == "held:defer-1"
    assert duplicate.get(timeout=60) == "held:defer-1"  # a duplicate: the owner's result
    assert not DeadLetter.objects.exists()
