"""Singletons, idempotency windows and NotFinished, through a real broker and worker."""

from __future__ import annotations

import time

import pytest

from celery_hygiene.models import ClaimStatus, DeadLetter, TaskClaim
from tests.conftest import wait_until
from tests.testapp import tasks_recurring as r
from tests.testapp.models import Attempt, SideEffect

pytestmark = pytest.mark.worker


def test_a_singleton_runs_once_at_a_time_and_frees_its_key_after(worker, queue_name):
    results = [r.nightly_sweep.apply_async(queue=queue_name) for _ in range(3)]
    values = sorted(str(result.get(timeout=30)) for result in results)
    assert values == ["None", "None", "swept"]  # two were skipped while the first ran
    assert SideEffect.objects.filter(kind="sweep").count() == 1
    assert worker.log().count("task_singleton_busy task=tests.testapp.tasks_recurring") == 2

    assert r.nightly_sweep.apply_async((0.1,), queue=queue_name).get(timeout=30) == "swept"
    assert SideEffect.objects.filter(kind="sweep").count() == 2  # the next tick runs
    assert not DeadLetter.objects.exists()


def test_a_waiting_singleton_runs_every_call_but_never_two_at_once(worker, queue_name):
    first = r.sync_account.apply_async(("acme", 1.5), queue=queue_name)
    second = r.sync_account.apply_async(("acme", 0.2), queue=queue_name)
    other = r.sync_account.apply_async(("globex", 0.2), queue=queue_name)
    assert first.get(timeout=30) == second.get(timeout=30) == "synced:acme"
    assert other.get(timeout=30) == "synced:globex"
    runs = sorted(
        (e.payload["start"], e.payload["end"])
        for e in SideEffect.objects.filter(entity="acme", kind="sync")
    )
    assert len(runs) == 2
    assert runs[1][0] >= runs[0][1]  # the second started after the first ended
    claim = TaskClaim.objects.get(entity="acme")
    assert claim.status == ClaimStatus.SUCCEEDED


def test_a_window_blocks_duplicates_only_for_its_length(worker, queue_name):
    assert r.daily_digest.apply_async(("2026-11-25",), queue=queue_name).get(timeout=30)
    r.daily_digest.apply_async(("2026-11-25",), queue=queue_name).get(timeout=30)
    assert SideEffect.objects.filter(kind="digest").count() == 1  # a duplicate inside it
    time.sleep(2.2)
    r.daily_digest.apply_async(("2026-11-25",), queue=queue_name).get(timeout=30)
    assert SideEffect.objects.filter(kind="digest").count() == 2  # the window has passed
    assert TaskClaim.objects.get(entity="2026-11-25").attempts == 1  # a fresh run's budget


@pytest.mark.parametrize("task", [r.close_batch, r.close_batch_atomic], ids=["plain", "atomic"])
def test_not_finished_leaves_the_key_to_the_next_message(worker, queue_name, task):
    assert task.apply_async(("b-1",), queue=queue_name).get(timeout=30) is None
    wait_until(lambda: not TaskClaim.objects.filter(entity="b-1").exists(), timeout=10)
    assert "task_not_finished" in worker.log()
    assert Attempt.objects.filter(key="b-1").count() == 1  # the run's own write committed
    assert task.apply_async(("b-1",), queue=queue_name).get(timeout=30) == "closed:b-1"
    assert SideEffect.objects.filter(entity="b-1", kind="closed").count() == 1
    assert not DeadLetter.objects.exists()


def test_a_crashed_singleton_frees_its_key_for_ticks_with_other_arguments(
    worker_factory, queue_name
):
    """A run is SIGKILLed mid-body (acks early: its message is gone). Later ticks carry other
    arguments (``sync(account, since)``); one of them runs once the 3 s lease has lapsed."""
    first_worker = worker_factory(queue_name, concurrency=1)
    r.crash_prone_sync.apply_async(("acme", 1, 120.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="acme:1").exists(), timeout=30)
    first_worker.kill()
    worker_factory(queue_name, concurrency=1)
    ticks: list[int] = []

    def a_tick_ran() -> bool:
        ticks.append(len(ticks) + 2)
        r.crash_prone_sync.apply_async(("acme", ticks[-1]), queue=queue_name)
        return SideEffect.objects.filter(entity="acme", kind="crash_prone_sync").exists()

    wait_until(a_tick_ran, timeout=60, interval=1.0)  # beat: one tick a second
    ran = SideEffect.objects.get(entity="acme", kind="crash_prone_sync")
    assert ran.payload["since"] != 1  # a later tick, with its own arguments
    claim = TaskClaim.objects.get(entity="acme")
    wait_until(lambda: TaskClaim.objects.get(entity="acme").status == ClaimStatus.SUCCEEDED)
    claim.refresh_from_db()
    assert claim.attempts == 1  # a new run, with the whole retry policy
    assert not DeadLetter.objects.exists()


def test_a_waiting_singleton_takes_over_a_crashed_run_with_other_arguments(
    worker_factory, queue_name
):
    """``wait=True``: the next tick waits for the crashed run's lease, then runs (it does not
    re-publish itself forever)."""
    first_worker = worker_factory(queue_name, concurrency=1)
    r.crash_prone_sync_waiting.apply_async(("acme", 1, 120.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="acme:1").exists(), timeout=30)
    first_worker.kill()
    second_worker = worker_factory(queue_name, concurrency=1)
    tick = r.crash_prone_sync_waiting.apply_async(("acme", 2), queue=queue_name)
    assert tick.get(timeout=60) == "synced:acme:2"
    busy = second_worker.log().count("task_claim_busy")
    time.sleep(3)  # more than the 2 s DEFER_MAX_SECONDS: a copy still waiting would show
    assert second_worker.log().count("task_claim_busy") == busy
    assert SideEffect.objects.filter(entity="acme", kind="crash_prone_sync_waiting").count() == 1
    assert not DeadLetter.objects.exists()
