"""@idempotent_task through a real broker and real prefork worker processes (issue 2)."""

from __future__ import annotations

import re

import pytest
from celery.result import AsyncResult

from celery_hygiene.models import ClaimStatus, DeadLetter, TaskClaim
from tests.conftest import broker_is_redis, wait_until
from tests.testapp import tasks
from tests.testapp.models import Attempt, SideEffect

pytestmark = pytest.mark.worker


def effects(entity: str, kind: str) -> int:
    return SideEffect.objects.filter(entity=entity, kind=kind).count()


def test_first_delivery_runs_once_and_duplicates_get_the_stored_result(worker, queue_name):
    first = tasks.charge_order.apply_async((7, 1500), queue=queue_name)
    assert first.get(timeout=30) == {"order_id": 7, "charged": 1500}

    duplicates = [tasks.charge_order.apply_async((7, 1500), queue=queue_name) for _ in range(3)]
    assert [d.get(timeout=30) for d in duplicates] == [{"order_id": 7, "charged": 1500}] * 3

    assert effects("7", "charge") == 1
    claim = TaskClaim.objects.get(entity="7", operation="charge")
    assert claim.status == ClaimStatus.SUCCEEDED
    assert claim.owner_task_id == first.id
    worker.wait_for_log("task_duplicate")
    assert worker.log().count("task_duplicate task=tests.testapp.tasks.charge_order") == 3
    # Users can count duplicates: our signal fired once per duplicate, in the worker.
    signalled = SideEffect.objects.filter(entity="7", kind="signal:duplicate")
    assert sorted(s.payload["task_id"] for s in signalled) == sorted(d.id for d in duplicates)


def test_keyword_and_positional_calls_are_the_same_work(worker, queue_name):
    a = tasks.charge_order.apply_async((8, 100), queue=queue_name)
    a.get(timeout=30)
    b = tasks.charge_order.apply_async(
        kwargs={"amount_cents": 100, "order_id": 8}, queue=queue_name
    )
    assert b.get(timeout=30) == {"order_id": 8, "charged": 100}
    assert effects("8", "charge") == 1
    assert "task_claim_mismatch" not in worker.log()


def test_duplicate_arriving_while_first_runs_does_not_run_the_body(worker, queue_name):
    first = tasks.charge_order.apply_async((9, 200, 2.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="9").exists())
    second = tasks.charge_order.apply_async((9, 200, 2.0), queue=queue_name)

    assert first.get(timeout=30) == {"order_id": 9, "charged": 200}
    assert second.get(timeout=30) == {"order_id": 9, "charged": 200}
    assert Attempt.objects.filter(key="9").count() == 1
    assert effects("9", "charge") == 1
    assert "task_claim_busy task=tests.testapp.tasks.charge_order" in worker.log()


def test_same_key_different_arguments_is_skipped_with_a_warning(worker, queue_name):
    tasks.charge_order.apply_async((10, 100), queue=queue_name).get(timeout=30)
    skipped = tasks.charge_order.apply_async((10, 999), queue=queue_name)
    assert skipped.get(timeout=30) is None
    assert effects("10", "charge") == 1
    worker.wait_for_log("task_claim_mismatch task=tests.testapp.tasks.charge_order")


def test_same_key_different_arguments_can_raise(worker, queue_name):
    assert tasks.strict_transfer.apply_async(("acct-1", 5), queue=queue_name).get(timeout=30) == 5
    conflict = tasks.strict_transfer.apply_async(("acct-1", 6), queue=queue_name)
    with pytest.raises(Exception) as info:
        conflict.get(timeout=30)
    assert type(info.value).__name__ == "IdempotencyConflict"
    assert "tests.testapp.tasks.strict_transfer" in str(info.value)
    assert effects("acct-1", "transfer") == 1
    # Not silently dropped: the conflicting message is kept for an operator.
    dead = DeadLetter.objects.get(task_id=conflict.id)
    assert dead.kwargs == {} and dead.args == ["acct-1", 6]


def test_bind_name_and_explicit_queue_options_work_like_shared_task(worker, queue_name):
    result = tasks.bound_task.apply_async(("bound-1",), queue=queue_name)
    assert result.get(timeout=30) == result.id
    effect = SideEffect.objects.get(entity="bound-1", kind="bound")
    assert effect.payload == {"task_id": result.id}
    assert tasks.bound_task.name == "tests.bound_task"


def test_entity_callable_that_raises_or_returns_empty_fails_clearly_without_running(
    worker, queue_name
):
    broken = tasks.broken_entity.apply_async(("k1",), queue=queue_name)
    with pytest.raises(Exception) as info:
        broken.get(timeout=30)
    assert type(info.value).__name__ == "EntityKeyError"
    assert "tests.testapp.tasks.broken_entity" in str(info.value)
    assert "ZeroDivisionError" in str(info.value)

    empty = tasks.keyed_by_callable.apply_async(("   ",), queue=queue_name)
    with pytest.raises(Exception) as info:
        empty.get(timeout=30)
    assert "entity key is empty" in str(info.value)

    assert not SideEffect.objects.filter(kind__in=["broken", "callable"]).exists()
    assert set(DeadLetter.objects.values_list("task_id", flat=True)) == {broken.id, empty.id}


def test_unstorable_result_fails_clearly_and_is_not_run_again(worker, queue_name):
    first = tasks.unstorable_result.apply_async(("u1",), queue=queue_name)
    with pytest.raises(Exception) as info:
        first.get(timeout=30)
    assert type(info.value).__name__ == "ResultNotStorable"
    assert "tests.testapp.tasks.unstorable_result" in str(info.value)
    # The body ran (its effect exists), so the claim says so and a duplicate does not re-run it.
    assert TaskClaim.objects.get(entity="u1").status == ClaimStatus.SUCCEEDED
    tasks.unstorable_result.apply_async(("u1",), queue=queue_name).get(timeout=30)
    assert effects("u1", "unstorable") == 1


def test_atomic_body_effects_commit_with_the_claim(worker, queue_name):
    # Fails twice (ConnectionError is retried), succeeds on the third attempt.
    result = tasks.issue_invoice.apply_async((42,), {"fail_first": 2}, queue=queue_name)
    assert result.get(timeout=30) == "invoice:42"
    assert Attempt.objects.filter(task="issue_invoice", key="42").count() == 3
    # The two failed attempts' writes were rolled back with their claims.
    assert effects("invoice:42", "invoice") == 1
    claim = TaskClaim.objects.get(entity="invoice:42")
    assert claim.status == ClaimStatus.SUCCEEDED and claim.attempts == 3
    assert not DeadLetter.objects.exists()

    tasks.issue_invoice.apply_async((42,), queue=queue_name).get(timeout=30)
    assert effects("invoice:42", "invoice") == 1


def test_race_200_messages_10_entities_each_effect_exactly_once(worker_factory, queue_name):
    results = [
        tasks.race_effect.apply_async((f"race-{i % 10}", i), queue=queue_name) for i in range(200)
    ]
    # The worker starts after the burst is queued, so its 4 processes race from the first message.
    worker_factory(queue_name, concurrency=4)
    for result in results:
        result.get(timeout=60)
    counts = {
        f"race-{n}": SideEffect.objects.filter(entity=f"race-{n}", kind="race").count()
        for n in range(10)
    }
    assert counts == {f"race-{n}": 1 for n in range(10)}


def test_worker_killed_mid_task_redelivery_waits_for_lease_and_completes_once(
    worker_factory, queue_name
):
    first_worker = worker_factory(queue_name, concurrency=2)
    result = tasks.crashable.apply_async(("crash-1", 30.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="crash-1").exists())
    # The second worker is up before the crash, so RabbitMQ redelivers to it at once, well
    # inside the dead owner's 8 s lease.
    second_worker = worker_factory(queue_name, concurrency=2)
    claimed_at = TaskClaim.objects.get(entity="crash-1").updated_at
    first_worker.kill()  # SIGKILL the whole worker: acks_late keeps the message in RabbitMQ

    assert result.get(timeout=60) == "done:crash-1"
    claim = TaskClaim.objects.get(entity="crash-1")
    # The redelivered message did not run before the lease ran out: it waited (a countdown).
    assert (claim.updated_at - claimed_at).total_seconds() >= 8
    if not broker_is_redis():
        # RabbitMQ redelivers at once, inside the lease; Redis only after its visibility
        # timeout (20 s here), when the lease has lapsed already.
        assert "task_claim_busy task=tests.testapp.tasks.crashable" in second_worker.log()
    assert Attempt.objects.filter(key="crash-1").count() == 2
    assert effects("crash-1", "crashable") == 1
    assert claim.status == ClaimStatus.SUCCEEDED and claim.attempts == 2


def test_lost_message_is_recovered_by_a_later_duplicate_after_the_lease(worker_factory, queue_name):
    first_worker = worker_factory(queue_name, concurrency=2)
    tasks.early_ack.apply_async(("lost-1", 30.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="lost-1").exists())
    first_worker.kill()  # acked on receipt: this message is gone for good
    assert TaskClaim.objects.get(entity="lost-1").status == ClaimStatus.RUNNING

    worker_factory(queue_name, concurrency=2)
    duplicate = tasks.early_ack.apply_async(("lost-1", 30.0), queue=queue_name)
    assert duplicate.get(timeout=60) == "done:lost-1"
    assert effects("lost-1", "early_ack") == 1
    assert TaskClaim.objects.get(entity="lost-1").status == ClaimStatus.SUCCEEDED


def test_async_result_of_a_duplicate_is_the_first_runs_value(worker, queue_name):
    first = tasks.charge_order.apply_async((11, 300), queue=queue_name)
    first.get(timeout=30)
    dup = tasks.charge_order.apply_async((11, 300), queue=queue_name)
    dup.get(timeout=30)
    assert AsyncResult(dup.id).state == "SUCCESS"


def test_a_waiting_duplicate_looks_again_soon_then_less_often(worker, queue_name):
    """The first re-check of a busy claim comes after ~0.5 s (not after the holder's lease),
    each later one about twice as late, capped by DEFER_MAX_SECONDS (2 s in the test settings)."""
    first = tasks.charge_order.apply_async((21, 300, 4.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="21").exists())
    second = tasks.charge_order.apply_async((21, 300, 4.0), queue=queue_name)
    assert first.get(timeout=30) == second.get(timeout=30) == {"order_id": 21, "charged": 300}

    waits = [
        float(m)
        for m in re.findall(rf"task_claim_busy .*id={second.id} .*retry_in=([0-9.]+)", worker.log())
    ]
    assert len(waits) >= 3, worker.log()[-2000:]
    assert waits[0] <= 1.0  # 0.5 s plus up to 0.5 s of jitter
    assert waits[1] >= 1.0 and max(waits) <= 2.5  # doubled, then capped (+ jitter)
    assert Attempt.objects.filter(key="21").count() == 1
