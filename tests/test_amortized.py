"""Amortized completion (issue 12, ``AMORTIZED_COMPLETION``): pool processes hand completions
to the worker's main process, which records them in batches before acks-late messages are
acknowledged. Real prefork workers, real broker, real PostgreSQL; the database fault is injected
into the main process's batch only (``HYGIENE_FAIL_COMPLETION_BATCH_FLAG``)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from celery_hygiene.claims import state as claims
from celery_hygiene.claims.state import ClaimKey
from celery_hygiene.models import ClaimStatus, DeadLetter, TaskClaim
from tests.conftest import wait_until
from tests.testapp import tasks_amortized as t
from tests.testapp.models import Attempt, SideEffect

AMORTIZED = {"HYGIENE_AMORTIZED_COMPLETION": "1"}


def _stopped_counts(log: str) -> tuple[int, int]:
    match = re.search(r"amortized_completion_stopped .*batches=(\d+) .*recorded=(\d+)", log)
    assert match, log[-3000:]
    return int(match.group(1)), int(match.group(2))


@pytest.mark.worker
def test_the_main_process_records_every_completion_and_duplicates_see_them(
    worker_factory, queue_name
):
    worker = worker_factory(queue_name, concurrency=4, env=AMORTIZED)
    worker.wait_for_log("amortized_completion_started")
    keys = [f"am-{i}" for i in range(40)]
    results = [t.recorded_early.apply_async((k,), queue=queue_name) for k in keys]
    # A result too large for one atomic pipe write is completed in the pool process instead.
    big = t.recorded_early.apply_async(("am-big", 6000), queue=queue_name)
    assert [r.get(timeout=60) for r in results] == [f"done:{k}" for k in keys]
    assert big.get(timeout=60) == "x" * 6000
    wait_until(
        lambda: TaskClaim.objects.filter(status=ClaimStatus.SUCCEEDED).count() == 41, timeout=10
    )
    duplicates = [t.recorded_early.apply_async((k,), queue=queue_name) for k in keys[:10]]
    assert [r.get(timeout=60) for r in duplicates] == [f"done:{k}" for k in keys[:10]]
    worker.stop()

    assert SideEffect.objects.filter(kind="early").count() == 41
    batches, recorded = _stopped_counts(worker.log())
    assert recorded == 40  # every body the main process was handed; none by the big one
    assert 1 <= batches <= 40
    assert "task_claim_lost" not in worker.log()
    assert TaskClaim.objects.get(entity="am-big").result_json == '"' + "x" * 6000 + '"'


@pytest.mark.worker
def test_an_acks_late_message_is_acknowledged_only_after_its_completion_is_recorded(
    worker_factory, queue_name, tmp_path: Path
):
    """While the main process cannot record the batch, the message stays unacknowledged; once
    the database takes the batch, the ack goes out, and a restarted worker gets nothing back."""
    flag = tmp_path / "refuse-batch"
    flag.touch()
    env = {**AMORTIZED, "HYGIENE_FAIL_COMPLETION_BATCH_FLAG": str(flag)}
    worker = worker_factory(queue_name, concurrency=2, env=env)
    early = [t.recorded_early.apply_async((f"early-{i}",), queue=queue_name) for i in range(20)]
    assert [r.get(timeout=60) for r in early] == [f"done:early-{i}" for i in range(20)]
    late = [t.recorded_late.apply_async((f"held-{i}",), queue=queue_name) for i in range(2)]
    assert [r.get(timeout=30) for r in late] == ["done:held-0", "done:held-1"]
    worker.wait_for_log("completion_batch_failed")
    time.sleep(1.5)
    assert set(TaskClaim.objects.values_list("status", flat=True)) == {ClaimStatus.RUNNING}
    # A failed batch is retried after a back-off (0.1 s doubling to DB_RETRY_MAX_WAIT, 0.5 s in
    # the test settings): a handful of tries in these 2 s, not one per arriving record (22).
    assert worker.log().count("completion_batch_failed") <= 14

    # Held acknowledgements count against the prefetch window (2 here): no more deliveries.
    more = [t.recorded_late.apply_async((f"held-{i}",), queue=queue_name) for i in range(2, 5)]
    time.sleep(1.5)
    assert Attempt.objects.filter(task="recorded_late").count() == 2

    flag.unlink()  # the database is back for the main process
    assert [r.get(timeout=30) for r in more] == [f"done:held-{i}" for i in range(2, 5)]
    wait_until(
        lambda: TaskClaim.objects.filter(status=ClaimStatus.SUCCEEDED).count() == 25, timeout=30
    )
    time.sleep(0.5)  # the event loop sends the released acks
    worker.kill()  # a crash now must not bring the messages back: they were acknowledged
    worker_factory(queue_name, concurrency=2, env=AMORTIZED)
    time.sleep(5.0)  # past the 2 s lease: a redelivered copy would have run by now
    assert Attempt.objects.filter(task="recorded_late").count() == 5
    assert SideEffect.objects.filter(kind="late").count() == 5
    assert SideEffect.objects.filter(kind="early").count() == 20


@pytest.mark.worker
def test_a_worker_killed_before_its_batch_is_recorded_gets_the_message_back(
    worker_factory, queue_name, tmp_path: Path
):
    """The documented window: body done, batch not recorded, whole worker SIGKILLed. The
    message was never acknowledged, so it comes back; once the dead owner's 2 s lease lapses
    the redelivery runs the body again (as with a kill between body and inline completion) and
    records it. Nothing is lost; the body runs twice. (On Redis the message comes back after the
    20 s visibility timeout of the test settings, restored by the new worker.)"""
    flag = tmp_path / "refuse-batch"
    flag.touch()
    env = {**AMORTIZED, "HYGIENE_FAIL_COMPLETION_BATCH_FLAG": str(flag)}
    worker = worker_factory(queue_name, concurrency=2, env=env)
    result = t.recorded_late.apply_async(("window-1",), queue=queue_name)
    assert result.get(timeout=30) == "done:window-1"
    worker.wait_for_log("completion_batch_failed")
    time.sleep(1.0)  # an acknowledgement that did not wait for the record would be out by now
    worker.kill()

    worker_factory(queue_name, concurrency=2, env=AMORTIZED)
    wait_until(
        lambda: TaskClaim.objects.get(entity="window-1").status == ClaimStatus.SUCCEEDED,
        timeout=90,
    )
    assert Attempt.objects.filter(key="window-1").count() == 2
    assert TaskClaim.objects.get(entity="window-1").attempts == 2


@pytest.mark.worker
def test_a_warm_shutdown_records_the_completions_of_bodies_that_finish_during_it(
    worker_factory, queue_name
):
    """SIGTERM while a body runs: the pool finishes it, and the main process records its
    completion before it exits, so whatever happens to the message, the body does not run
    again (a redelivered copy finds the claim succeeded)."""
    worker = worker_factory(queue_name, concurrency=2, env=AMORTIZED)
    result = t.recorded_late.apply_async(("warm-1", 2.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="warm-1").exists(), timeout=30)
    worker.stop(timeout=30)
    assert TaskClaim.objects.get(entity="warm-1").status == ClaimStatus.SUCCEEDED
    _, recorded = _stopped_counts(worker.log())
    assert recorded == 1

    worker_factory(queue_name, concurrency=2, env=AMORTIZED)
    assert result.get(timeout=30) == "done:warm-1"
    time.sleep(4.0)  # past the 2 s lease: a copy that ran again would show by now
    assert Attempt.objects.filter(key="warm-1").count() == 1
    assert SideEffect.objects.filter(entity="warm-1", kind="late").count() == 1


@pytest.mark.worker
@pytest.mark.parametrize("requeued", [True, False], ids=["reject_on_worker_lost", "dead_letter"])
def test_a_pool_process_that_dies_after_handing_over_its_completion_has_finished(
    worker_factory, queue_name, tmp_path: Path, requeued: bool
):
    """The body returned and its completion is in the pipe; then the pool process dies. The
    main process records the completion before it acts on the death: no redelivery runs the
    body again (reject_on_worker_lost), and no dead letter is written for a body that ran."""
    flag = tmp_path / "die-after-body"
    flag.touch()
    # A 15 s gather: the writer would not get to the record before the main process hears of
    # the death, so only the flush on that death can record it in time.
    env = {
        **AMORTIZED,
        "HYGIENE_DIE_AFTER_BODY_FLAG": str(flag),
        "HYGIENE_AMORTIZED_GATHER_MS": "15000",
    }
    worker = worker_factory(queue_name, concurrency=2, env=env)
    task = t.dies_after_body_requeued if requeued else t.dies_after_body_dead_lettered
    task.apply_async(("died-1",), queue=queue_name)
    worker.wait_for_log("WorkerLostError")
    wait_until(
        lambda: TaskClaim.objects.filter(entity="died-1", status=ClaimStatus.SUCCEEDED).exists(),
        timeout=30,
    )
    time.sleep(3.0)  # a redelivery (requeued) would have run by now
    assert Attempt.objects.filter(task="dies_after_body", key="died-1").count() == 1
    assert not DeadLetter.objects.filter(task_name=task.name).exists()
    assert TaskClaim.objects.get(entity="died-1").attempts == 1


@pytest.mark.django_db(transaction=True)
def test_complete_many_records_a_batch_fenced_like_complete():
    """One statement for the batch; a claim taken over (other owner or attempt) is untouched."""
    using = claims.write_alias()
    tickets = []
    for i in range(3):
        key = ClaimKey(f"batch-{i}", "op", "tests.batch", "fp")
        acquired = claims.acquire(
            key, owner_task_id=f"task-{i}", owner_worker="w", lease_seconds=30, using=using
        )
        assert acquired.ticket is not None
        tickets.append(acquired.ticket)
    finished = [
        claims.Finished(tk.key.entity, "op", tk.owner_task_id, tk.attempts, f'"r{i}"')
        for i, tk in enumerate(tickets)
    ]
    finished[1] = claims.Finished("batch-1", "op", "task-1", 7, '"stale attempt"')
    finished.append(claims.Finished("batch-2", "op", "someone-else", 1, '"not the owner"'))

    recorded = claims.complete_many(finished, using=using)

    assert recorded == {("batch-0", "op", "task-0"), ("batch-2", "op", "task-2")}
    rows = {c.entity: c for c in TaskClaim.objects.all()}
    assert rows["batch-0"].status == ClaimStatus.SUCCEEDED and rows["batch-0"].result_json == '"r0"'
    assert rows["batch-1"].status == ClaimStatus.RUNNING
    assert rows["batch-2"].result_json == '"r2"'
    assert claims.complete_many([], using=using) == set()


def test_only_a_request_class_that_holds_acks_lets_acks_late_tasks_hand_over():
    """A task whose own Request class would acknowledge before the batch is recorded completes
    in its pool process instead (amortized.hand_over checks this)."""
    from celery_hygiene.worker import amortized

    class Held(amortized.HygieneRequest):
        pass

    assert amortized._holds_acks("celery_hygiene.worker.amortized:HygieneRequest")
    assert amortized._holds_acks(Held)
    assert not amortized._holds_acks("celery.worker.request:Request")
    assert not amortized._holds_acks("no.such.module:Request")
    assert amortized._holds_acks("celery_hygiene.task.handover:HygieneRequest")
    assert t.recorded_late.Request == "celery_hygiene.task.handover:HygieneRequest"
