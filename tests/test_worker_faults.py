"""The worker's main process under faults of its own (issue 19): a silent or reset broker path
for one worker only (a TCP relay, tests/relay.py), pool processes dying, shutdowns with
acknowledgements still held. Real workers, real broker (RabbitMQ or Redis), real PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from celery_hygiene.failures import outbox
from celery_hygiene.models import ClaimStatus, OutboxMessage, TaskClaim
from tests.conftest import delete_queue, wait_until
from tests.relay import Relay
from tests.testapp import tasks_amortized as ta
from tests.testapp import tasks_worker as tw
from tests.testapp.models import Attempt, SideEffect
from tests.workers import WorkerProcess

pytestmark = pytest.mark.worker
AMORTIZED = {"HYGIENE_AMORTIZED_COMPLETION": "1"}


@pytest.fixture
def relay() -> Iterator[Relay]:
    broker = urlsplit(str(settings.CELERY_BROKER_URL))
    relay = Relay(broker.hostname or "127.0.0.1", broker.port or _default_port(broker.scheme))
    yield relay
    relay.mode = "pass"
    relay.close()


def _default_port(scheme: str) -> int:
    return 6379 if scheme.startswith("redis") else 5672


def _through(relay: Relay, env: dict[str, str] | None = None) -> dict[str, str]:
    return {**(env or {}), "HYGIENE_BROKER_URL": relay.url_for(str(settings.CELERY_BROKER_URL))}


def _row_taken(task_id: str) -> bool:
    """A sweep has taken the parked row: it marks the row sent, in its own commit, just before
    it publishes (failures/outbox.py)."""
    return OutboxMessage.objects.filter(task_id=task_id, sent_at__isnull=False).exists()


def test_a_stalled_broker_path_does_not_stop_lease_renewal(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, relay: Relay, tmp_path: Path
) -> None:
    """Worker 1 runs a long body (until the test ends it) with a 4 s lease; then its broker
    path goes silent while its broker I/O is due (a parked outbox row to re-send; on Redis also
    the restore scan). Its PostgreSQL is healthy, so its leases keep being renewed: a
    duplicate on worker 2, sent after more than a lease, waits instead of running the body a
    second time alongside the first."""
    env = _through(relay, {"HYGIENE_CONFIRM_PUBLISH": "1"})  # RabbitMQ: publishes wait
    first_worker = worker_factory(queue_name, concurrency=2, env=env)
    running = tmp_path / "body-runs"
    running.touch()
    first = tw.long_body_short_lease.apply_async(("stall-1", str(running)), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="stall-1").exists(), timeout=30)
    parked_queue = f"{queue_name}-parked"

    def park(task_id: str) -> OutboxMessage:
        sig = tw.beat_singleton.signature((0.0,), queue=parked_queue, task_id=task_id)
        return outbox.park(sig, reason="retry", error=OSError("injected: parked for the test"))

    # One re-send while the path is healthy: worker 1 has a broker connection for publishing.
    warm = park(f"{queue_name}-warm")
    sent_warm = f"outbox_resent task={warm.task_name} id={warm.task_id}"
    wait_until(lambda: sent_warm in first_worker.log(), timeout=30)

    relay.mode = "stall"
    parked = park(f"{queue_name}-p")
    # Worker 1's sweep has taken the row and is publishing it into the silent path.
    wait_until(lambda: _row_taken(parked.task_id), timeout=30)
    assert f"outbox_resent task={parked.task_name} id={parked.task_id}" not in first_worker.log()
    other_queue = f"{queue_name}-b"
    second_worker = worker_factory(other_queue, concurrency=2)
    time.sleep(7.0)  # well past the 4 s lease: a lease not renewed since the stall has lapsed
    duplicate = tw.long_body_short_lease.apply_async(("stall-1", str(running)), queue=other_queue)
    second_worker.wait_for_log(f"task_claim_busy task={tw.long_body_short_lease.name}")
    assert Attempt.objects.filter(key="stall-1").count() == 1  # no second run alongside
    assert not first.ready()

    relay.mode = "pass"
    running.unlink()
    assert first.get(timeout=60) == "done:stall-1"
    assert duplicate.get(timeout=60) == "done:stall-1"
    assert Attempt.objects.filter(key="stall-1").count() == 1
    assert SideEffect.objects.filter(entity="stall-1", kind="long").count() == 1
    claim = TaskClaim.objects.get(entity="stall-1")
    assert claim.status == ClaimStatus.SUCCEEDED and claim.attempts == 1
    assert claim.owner_worker == first_worker.hostname
    assert "task_claim_lost" not in first_worker.log()
    assert "lease_lost" not in first_worker.log()
    from tests.celery_app import app

    delete_queue(app, other_queue)
    delete_queue(app, parked_queue)


def test_amortized_acknowledgements_survive_a_broker_reconnect(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, relay: Relay
) -> None:
    """AMORTIZED_COMPLETION, acks_late, prefetch 1: the event loop sends the acknowledgements
    the writer releases. After the broker connection is reset and Celery reconnects (resetting
    its event loop), it still does: every task of a later batch runs."""
    worker = worker_factory(queue_name, concurrency=1, env=_through(relay, AMORTIZED))
    worker.wait_for_log("amortized_completion_started")
    assert ta.recorded_late.apply_async(("reset-0",), queue=queue_name).get(timeout=30)
    connected = worker.log().count("Connected to")
    assert relay.reset() >= 1
    wait_until(lambda: worker.log().count("Connected to") > connected, timeout=60)

    batch = [ta.recorded_late.apply_async((f"reset-{i}",), queue=queue_name) for i in range(1, 5)]
    assert [r.get(timeout=60) for r in batch] == [f"done:reset-{i}" for i in range(1, 5)]
    wait_until(
        lambda: TaskClaim.objects.filter(status=ClaimStatus.SUCCEEDED).count() == 5, timeout=30
    )


def test_a_claim_taken_over_while_its_body_runs_is_reported_at_once(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, tmp_path: Path
) -> None:
    """The renewal finds the claim in another owner's hands (what a takeover after a lapsed
    lease leaves): `lease_lost` is logged while the body still runs, not only at completion."""
    worker = worker_factory(queue_name, concurrency=2)
    running = tmp_path / "body-runs"
    running.touch()
    result = tw.long_body_short_lease.apply_async(("lost-1", str(running)), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="lost-1").exists(), timeout=30)
    TaskClaim.objects.filter(entity="lost-1").update(
        owner_task_id="intruder", owner_worker="elsewhere@host"
    )
    worker.wait_for_log("lease_lost entity=lost-1", timeout=15)
    assert not result.ready()  # reported while the body runs
    assert "holder=intruder holder_worker=elsewhere@host" in worker.log()
    time.sleep(3.0)  # more ticks: logged once, not on each
    running.unlink()
    result.get(timeout=30)
    assert worker.log().count("lease_lost ") == 1  # once, not on every tick


def test_when_only_a_pool_process_dies_the_redelivery_takes_the_claim_over_at_once(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, tmp_path: Path
) -> None:
    """acks_late + reject_on_worker_lost, lease 60 s: the pool process running the body is
    killed, Celery requeues the message, and the main process ends the lease at once; the
    redelivery runs within seconds, not after the 60 s lease."""
    flag = tmp_path / "die-once"
    flag.touch()
    worker = worker_factory(queue_name, concurrency=2)
    result = tw.dies_once.apply_async(("pool-death-1", str(flag)), queue=queue_name)
    assert result.get(timeout=30) == "done:pool-death-1"
    assert Attempt.objects.filter(task="dies_once", key="pool-death-1").count() == 2
    claim = TaskClaim.objects.get(entity="pool-death-1")
    assert claim.status == ClaimStatus.SUCCEEDED and claim.attempts == 2
    assert "lease_released_worker_lost" in worker.log()


def test_amortized_a_finished_body_waiting_for_its_record_keeps_its_lease(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, tmp_path: Path
) -> None:
    """AMORTIZED_COMPLETION: the body is done, the main process cannot record it yet (its
    batches are refused). Its claim is still renewed: a duplicate on another worker, two leases
    later, waits; once the batch is in, the duplicate gets the stored result. The held
    acknowledgement is reported as stuck meanwhile."""
    flag = tmp_path / "refuse-batch"
    flag.touch()
    env = {
        **AMORTIZED,
        "HYGIENE_FAIL_COMPLETION_BATCH_FLAG": str(flag),
        "HYGIENE_AMORTIZED_ACK_WARN_SECONDS": "2",
    }
    first_worker = worker_factory(queue_name, concurrency=2, env=env)
    assert ta.recorded_late.apply_async(("pending-1",), queue=queue_name).get(timeout=30)
    first_worker.wait_for_log("completion_batch_failed")
    other_queue = f"{queue_name}-b"
    second_worker = worker_factory(other_queue, concurrency=2)
    time.sleep(6.5)  # two 3 s leases: a lease nobody renewed has lapsed
    duplicate = ta.recorded_late.apply_async(("pending-1",), queue=other_queue)
    second_worker.wait_for_log(f"task_claim_busy task={ta.recorded_late.name}")
    assert Attempt.objects.filter(key="pending-1").count() == 1
    assert "amortized_acks_stuck" in first_worker.log()

    flag.unlink()  # the database takes the batch again
    assert duplicate.get(timeout=30) == "done:pending-1"
    assert Attempt.objects.filter(key="pending-1").count() == 1
    assert TaskClaim.objects.get(entity="pending-1").attempts == 1
    from tests.celery_app import app

    delete_queue(app, other_queue)


def test_amortized_warm_shutdown_sends_the_held_acknowledgements(
    worker_factory: Callable[..., WorkerProcess], queue_name: str
) -> None:
    """A singleton (the beat recipe) finishes during a warm shutdown: its completion is
    recorded and its acknowledgement sent before the worker exits. A new worker gets nothing
    back, so the run does not happen again (a finished singleton frees its key)."""
    worker = worker_factory(queue_name, concurrency=2, env=AMORTIZED)
    tw.beat_singleton.apply_async((2.0,), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(task="beat_singleton").exists(), timeout=30)
    worker.stop(timeout=30)
    assert worker.process is not None and worker.process.returncode == 0

    worker_factory(queue_name, concurrency=2, env=AMORTIZED)
    time.sleep(6.0)  # past the 3 s lease: a message that came back would have run by now
    assert Attempt.objects.filter(task="beat_singleton").count() == 1


def test_amortized_cold_shutdown_records_the_pending_batch(
    worker_factory: Callable[..., WorkerProcess], queue_name: str
) -> None:
    """A cold shutdown (SIGQUIT) while a completion waits in the main process (a 15 s gather
    here): it is recorded before the worker exits, so the claim is `succeeded`."""
    env = {**AMORTIZED, "HYGIENE_AMORTIZED_GATHER_MS": "15000"}
    worker = worker_factory(queue_name, concurrency=2, env=env)
    assert ta.recorded_late.apply_async(("cold-1",), queue=queue_name).get(timeout=30)
    assert TaskClaim.objects.get(entity="cold-1").status == ClaimStatus.RUNNING
    assert worker.process is not None
    os.kill(worker.pid, signal.SIGQUIT)
    worker.process.wait(timeout=30)
    assert TaskClaim.objects.get(entity="cold-1").status == ClaimStatus.SUCCEEDED
    assert "amortized_completion_stopped" in worker.log()


def test_amortized_a_dead_writer_thread_is_restarted(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, tmp_path: Path
) -> None:
    flag = tmp_path / "kill-writer"
    flag.touch()
    worker = worker_factory(
        queue_name, concurrency=2, env={**AMORTIZED, "HYGIENE_KILL_WRITER_FLAG": str(flag)}
    )
    results = [ta.recorded_late.apply_async((f"sup-{i}",), queue=queue_name) for i in range(3)]
    assert [r.get(timeout=30) for r in results] == [f"done:sup-{i}" for i in range(3)]
    worker.wait_for_log("completion_writer_restarted", timeout=15)
    wait_until(
        lambda: TaskClaim.objects.filter(status=ClaimStatus.SUCCEEDED).count() == 3, timeout=30
    )
