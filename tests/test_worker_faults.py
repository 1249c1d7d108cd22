"""The worker's main process under faults of its own (issue 19): a silent or reset broker path
for one worker only (a TCP relay, tests/relay.py), pool processes dying, shutdowns with
acknowledgements still held. Real workers, real broker (RabbitMQ or Redis), real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db import transaction

from celery_hygiene import outbox
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


def _row_is_locked(task_id: str) -> bool:
    """A sweep holds the parked row (SELECT .. FOR UPDATE SKIP LOCKED skips it here)."""
    with transaction.atomic():
        free = OutboxMessage.objects.select_for_update(skip_locked=True).filter(task_id=task_id)
        return OutboxMessage.objects.filter(task_id=task_id).exists() and not free.exists()


def test_a_stalled_broker_path_does_not_stop_lease_renewal(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, relay: Relay
) -> None:
    """Worker 1 runs a 20 s body with a 4 s lease; then its broker path goes silent while its
    broker I/O is due (a parked outbox row to re-send; on Redis also the restore scan). Its
    PostgreSQL is healthy, so its leases keep being renewed: a duplicate on worker 2, sent after
    more than a lease, waits instead of running the body a second time alongside the first."""
    env = _through(relay, {"HYGIENE_CONFIRM_PUBLISH": "1"})  # RabbitMQ: publishes wait
    first_worker = worker_factory(queue_name, concurrency=2, env=env)
    first = tw.long_body_short_lease.apply_async(("stall-1", 20.0), queue=queue_name)
    wait_until(lambda: Attempt.objects.filter(key="stall-1").exists(), timeout=30)
    parked_queue = f"{queue_name}-parked"

    def park(task_id: str) -> OutboxMessage:
        sig = tw.beat_singleton.signature((0.0,), queue=parked_queue, task_id=task_id)
        return outbox.park(sig, reason="retry", error=OSError("injected: parked for the test"))

    # One re-send while the path is healthy: worker 1 has a broker connection for publishing.
    park(f"{queue_name}-warm")
    wait_until(lambda: not OutboxMessage.objects.exists(), timeout=30)

    relay.mode = "stall"
    parked = park(f"{queue_name}-p")
    # Worker 1's sweep has taken the row and is publishing it into the silent path.
    wait_until(lambda: _row_is_locked(parked.task_id), timeout=30)
    other_queue = f"{queue_name}-b"
    second_worker = worker_factory(other_queue, concurrency=2)
    time.sleep(7.0)  # well past the 4 s lease: a lease not renewed since the stall has lapsed
    duplicate = tw.long_body_short_lease.apply_async(("stall-1", 20.0), queue=other_queue)
    second_worker.wait_for_log(f"task_claim_busy task={tw.long_body_short_lease.name}")
    assert Attempt.objects.filter(key="stall-1").count() == 1  # no second run alongside

    relay.mode = "pass"
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
