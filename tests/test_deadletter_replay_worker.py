"""Replay end to end: a real worker dead-letters a task, ``manage.py deadletter replay`` sends it
back, the worker runs it again (issue 4, replay semantics)."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from celery_hygiene.models import ClaimStatus, DeadLetter, TaskClaim
from tests.conftest import wait_until
from tests.testapp import tasks_deadletter as tasks
from tests.testapp.models import Attempt, SideEffect
from tests.workers import WorkerProcess

pytestmark = pytest.mark.worker


def replay_cli(*args: str) -> str:
    out = io.StringIO()
    call_command("deadletter", "replay", *args, stdout=out, stderr=out)
    return out.getvalue()


def dead_letter_for(task_id: str, worker: WorkerProcess) -> DeadLetter:
    try:
        return wait_until(lambda: DeadLetter.objects.filter(task_id=task_id).first(), timeout=60)
    except AssertionError:
        log = worker.log()[-4000:]
        raise AssertionError(f"no dead letter for {task_id}; worker log:\n{log}") from None


def test_replayed_task_that_fails_again_gets_a_new_linked_dead_letter(worker, queue_name):
    sent = tasks.always_fails.apply_async(("k1",), {"password": "real"}, queue=queue_name)
    first = dead_letter_for(sent.id, worker)
    assert first.attempts == 2 and first.kwargs == {"password": "real"}
    assert Attempt.objects.filter(key="k1").count() == 2

    replay_cli(str(first.pk))
    first.refresh_from_db()
    assert first.status == "replayed"

    second = dead_letter_for(first.replayed_task_id, worker)
    assert second.replay_of_id == first.pk
    assert second.pk != first.pk and second.status == "pending"
    # The replay went through the full retry policy again, with the original arguments.
    assert second.attempts == 2 and second.kwargs == {"password": "real"}
    assert second.queue == queue_name
    assert Attempt.objects.filter(key="k1").count() == 4
    assert list(first.replays.all()) == [second]


def test_replay_reopens_a_dead_idempotent_claim_so_the_body_runs_once_more(worker, queue_name):
    sent = tasks.charge_until_fixed.apply_async(("o-1",), queue=queue_name)
    dead = dead_letter_for(sent.id, worker)
    claim = TaskClaim.objects.get(entity="o-1")
    assert claim.status == ClaimStatus.DEAD and dead.entity == "o-1"

    SideEffect.objects.create(entity="o-1", kind="fixed")  # the operator fixes the cause
    replay_cli(str(dead.pk))
    dead.refresh_from_db()

    wait_until(lambda: SideEffect.objects.filter(entity="o-1", kind="charged").exists(), timeout=60)
    claim.refresh_from_db()
    assert claim.status == ClaimStatus.SUCCEEDED
    assert claim.owner_task_id == dead.replayed_task_id

    # A late duplicate of the original message is now a duplicate of the replay: no second charge.
    tasks.charge_until_fixed.apply_async(("o-1",), queue=queue_name).get(timeout=30)
    assert SideEffect.objects.filter(entity="o-1", kind="charged").count() == 1
    assert Attempt.objects.filter(key="o-1").count() == 3  # 2 failures + the replay
    assert DeadLetter.objects.count() == 1
