"""delay_on_commit / apply_async_on_commit: an intent in the caller's transaction, a publish
after COMMIT, and a relay that re-sends what got lost (docs/enqueue.md).

Real workers (tests/workers.py) on the suite's broker (RabbitMQ; the Redis leg with
HYGIENE_BROKER_URL=redis://...), real PostgreSQL. "Ran once" is read from the test's own tables
(Attempt per body run, SideEffect per effect), never from the library's bookkeeping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from celery_hygiene.exceptions import PayloadTooLarge
from celery_hygiene.failures import intents
from celery_hygiene.models import ClaimStatus, DeadLetter, EnqueueIntent, TaskClaim
from celery_hygiene.task.enqueue import build_intent
from tests.conftest import broker_is_redis, delete_queue, wait_until
from tests.testapp import tasks_enqueue as t
from tests.testapp.models import Attempt, SideEffect
from tests.workers import REPO_ROOT

pytestmark = pytest.mark.worker

DEAD_BROKER_PORT = 17401  # nothing listens here (this helper's private range)


def _effects(key: str, kind: str) -> int:
    return SideEffect.objects.filter(entity=key, kind=kind).count()


def _attempts(task: str, key: str) -> int:
    return Attempt.objects.filter(task=task, key=key).count()


def _settled(using: str = "default") -> bool:
    return not EnqueueIntent.objects.using(using).exists()


def _producer(mode: str, queue: str, keys: list[str], env: dict[str, str] | None = None) -> str:
    """Run tests/enqueue_producer.py on the test database; returns its output."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.enqueue_producer", mode, queue, *keys],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "HYGIENE_TEST_DB_NAME": connection.settings_dict["NAME"],
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_commit_runs_the_task_once_and_settles_its_intent(worker_factory, queue_name):
    worker_factory(queue_name, concurrency=2)
    key = f"order-{uuid.uuid4().hex[:8]}"
    with transaction.atomic():
        SideEffect.objects.create(entity=key, kind="order")
        task_id = t.charge.apply_async_on_commit((key,), queue=queue_name)
        assert isinstance(task_id, str)
        assert EnqueueIntent.objects.filter(task_id=task_id).exists()  # in this transaction
        time.sleep(1.0)  # a worker would run it now if it had been sent: it must not be
        assert _attempts("charge", key) == 0
    wait_until(lambda: _effects(key, "charge") == 1)
    claim = TaskClaim.objects.get(entity=key)
    assert claim.owner_task_id == task_id and claim.status == ClaimStatus.SUCCEEDED
    wait_until(_settled, timeout=20)  # the relay deletes it once its claim is final
    assert _attempts("charge", key) == 1


def test_a_rollback_sends_nothing(worker_factory, queue_name):
    worker = worker_factory(queue_name, concurrency=2)
    key = f"order-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError), transaction.atomic():
        t.charge.delay_on_commit(key)
        t.notify.delay_on_commit(key)
        raise RuntimeError("the order is not valid after all")
    assert not EnqueueIntent.objects.exists()
    time.sleep(5)  # past ENQUEUE_RESEND_SECONDS (2 s) and several relay rounds
    assert Attempt.objects.filter(key=key).count() == 0
    assert "enqueue_resent" not in worker.log()


def test_a_producer_killed_right_after_commit_still_gets_its_task_run_once(
    worker_factory, queue_name
):
    key = f"order-{uuid.uuid4().hex[:8]}"
    out = _producer("die", queue_name, [key])
    assert "committed" not in out  # it died in the first on-commit callback, before the publish
    assert SideEffect.objects.filter(entity=key, kind="order").count() == 1  # data committed
    (intent,) = EnqueueIntent.objects.all()
    assert intent.published_at is None
    worker = worker_factory(queue_name, concurrency=2)
    wait_until(lambda: _effects(key, "charge") == 1, timeout=30)
    assert "enqueue_resent" in worker.log()
    wait_until(_settled, timeout=20)
    time.sleep(1)
    assert _attempts("charge", key) == 1
    assert TaskClaim.objects.get(entity=key).owner_task_id == intent.task_id


def test_a_broker_down_at_commit_runs_the_task_once_when_a_worker_sweeps(
    worker_factory, queue_name
):
    key = f"order-{uuid.uuid4().hex[:8]}"
    dead = (
        f"redis://127.0.0.1:{DEAD_BROKER_PORT}/9"
        if broker_is_redis()
        else f"amqp://guest:guest@127.0.0.1:{DEAD_BROKER_PORT}//"
    )
    out = _producer("send", queue_name, [key], env={"HYGIENE_BROKER_URL": dead})
    assert "committed" in out  # the caller saw no error
    assert "enqueue_publish_failed" in out
    assert EnqueueIntent.objects.count() == 1
    worker = worker_factory(queue_name, concurrency=2)
    wait_until(lambda: _effects(key, "charge") == 1, timeout=30)
    assert "enqueue_resent" in worker.log()
    wait_until(_settled, timeout=20)
    assert _attempts("charge", key) == 1


@pytest.mark.parametrize("task_name", ["slow_early_ack", "slow_plain_early_ack"])
def test_a_task_without_acks_late_killed_mid_body_is_resent_after_its_lease(
    worker_factory, queue_name, task_name
):
    task = getattr(t, task_name)
    key = f"slow-{uuid.uuid4().hex[:8]}"
    first = worker_factory(queue_name, concurrency=1)
    task_id = task.apply_async_on_commit((key, 4.0), queue=queue_name)
    wait_until(lambda: _attempts(task_name, key) == 1)
    first.kill()  # the message was acknowledged on receipt: the broker has nothing left
    second = worker_factory(queue_name, concurrency=1)
    # Its lease (3 s here, DEFAULT_LEASE_SECONDS 30 for the claim-less one) lapses unrenewed.
    wait_until(lambda: SideEffect.objects.filter(entity=key).count() == 1, timeout=60)
    assert "enqueue_resent" in second.log()
    wait_until(_settled, timeout=20)
    assert _attempts(task_name, key) == 2  # killed once, finished once
    assert SideEffect.objects.filter(entity=key).count() == 1
    assert TaskClaim.objects.filter(owner_task_id=task_id, status=ClaimStatus.SUCCEEDED).exists()


def test_a_hygienic_task_body_longer_than_its_lease_keeps_it_and_is_not_resent(
    worker_factory, queue_name
):
    """The worker renews the task-id claim of an intent's run (worker/leases.py): a body three
    times its lease is not re-sent by the relay and runs once."""
    worker = worker_factory(queue_name, concurrency=2, env={"HYGIENE_DEFAULT_LEASE_SECONDS": "3"})
    key = f"long-{uuid.uuid4().hex[:8]}"
    t.slow_plain_early_ack.apply_async_on_commit((key, 9.0), queue=queue_name)
    wait_until(lambda: _effects(key, "slow-plain") == 1, timeout=60)
    wait_until(_settled, timeout=20)
    assert _attempts("slow_plain_early_ack", key) == 1
    assert "enqueue_resent" not in worker.log()


def test_two_workers_sweeping_the_same_backlog_send_each_intent_once(worker_factory, queue_name):
    keys = [f"bulk-{i}-{uuid.uuid4().hex[:6]}" for i in range(30)]
    out = _producer("die", queue_name, keys)
    ids = out.split()[: len(keys)]
    assert EnqueueIntent.objects.count() == len(keys)
    workers = [worker_factory(queue_name, concurrency=2) for _ in range(2)]
    wait_until(lambda: SideEffect.objects.filter(kind="charge").count() == len(keys), timeout=60)
    wait_until(_settled, timeout=30)
    logs = "".join(w.log() for w in workers)
    for task_id in ids:
        assert logs.count(f"enqueue_resent task={t.charge.name} id={task_id}") == 1
    for key in keys:
        assert _attempts("charge", key) == 1


@pytest.mark.django_db(databases=["default", "other"], transaction=True)
def test_using_a_second_database_writes_and_relays_the_intent_there(worker_factory, queue_name):
    worker_factory(
        queue_name,
        concurrency=2,
        env={
            "HYGIENE_ENQUEUE_DATABASES": "default,other",
            "HYGIENE_TEST_OTHER_DB_NAME": connections["other"].settings_dict["NAME"],
        },
    )
    rolled_back, key = f"gone-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError), transaction.atomic(using="other"):
        t.charge.apply_async_on_commit((rolled_back,), using="other", queue=queue_name)
        raise RuntimeError("rolled back")
    with transaction.atomic(using="other"):
        task_id = t.charge.apply_async_on_commit((key,), using="other", queue=queue_name)
        # Written in the "other" transaction, not the default database's.
        assert EnqueueIntent.objects.using("other").filter(task_id=task_id).exists()
        assert not EnqueueIntent.objects.using("default").exists()
    wait_until(lambda: _effects(key, "charge") == 1)
    wait_until(lambda: _settled("other"), timeout=20)  # the workers relay "other" too
    assert _attempts("charge", rolled_back) == 0
    assert _attempts("charge", key) == 1


def test_two_transactions_enqueueing_one_key_leave_one_intent_and_one_run(
    worker_factory, queue_name
):
    key = f"unique-{uuid.uuid4().hex[:8]}"
    second: dict[str, Any] = {}
    first_inserted = threading.Event()

    def other_transaction() -> None:
        try:
            first_inserted.wait(10)
            with transaction.atomic():
                started = time.monotonic()
                second["id"] = t.charge.apply_async_on_commit((key,), queue=queue_name)
                second["waited"] = time.monotonic() - started
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_transaction)
    thread.start()
    with transaction.atomic():
        first_id = t.charge.apply_async_on_commit((key,), queue=queue_name)
        first_inserted.set()
        time.sleep(1.0)  # the other transaction waits on this one's unsettled key
    thread.join(20)
    assert second["id"] == first_id
    assert second["waited"] >= 0.5
    assert EnqueueIntent.objects.filter(entity=key).count() == 1
    worker_factory(queue_name, concurrency=2)
    wait_until(lambda: _effects(key, "charge") == 1)
    time.sleep(3)
    assert _attempts("charge", key) == 1


def test_a_resent_copy_of_a_hygienic_task_cannot_run_its_body_twice(worker_factory, queue_name):
    key = f"plain-{uuid.uuid4().hex[:8]}"
    task_id = t.notify.apply_async_on_commit((key,), queue=queue_name)  # sent at once
    # The relay's copy of the same intent, as after a lost acknowledgement: same task id.
    from tests.celery_app import app

    intents.publish(app, t.notify.name, task_id, [key], {}, {"queue": queue_name})
    intents.publish(app, t.notify.name, task_id, [key], {}, {"queue": queue_name})
    worker_factory(queue_name, concurrency=2)
    wait_until(lambda: _effects(key, "notify") == 1)
    time.sleep(3)
    assert _attempts("notify", key) == 1
    claim = TaskClaim.objects.get(entity=task_id)
    assert claim.operation == intents.task_id_operation(t.notify.name)
    assert claim.status == ClaimStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_bad_input_raises_at_the_call_and_writes_nothing(settings):
    with pytest.raises(TypeError, match="do not fit the task signature"), transaction.atomic():
        t.charge.delay_on_commit("a", "b")
    with pytest.raises(TypeError, match="do not fit"):
        t.notify.apply_async_on_commit(kwargs={"nope": 1})
    settings.CELERY_HYGIENE = {**settings.CELERY_HYGIENE, "PAYLOAD_MAX_BYTES": 1000}
    with pytest.raises(PayloadTooLarge, match="PAYLOAD_MAX_BYTES"), transaction.atomic():
        t.notify.delay_on_commit("x" * 2000)
    assert not EnqueueIntent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_intent_sent_past_the_cap_becomes_an_undeliverable_dead_letter(settings):
    """No worker consumes its queue: each round re-sends it, then it is given up, visibly."""
    from tests.celery_app import app

    settings.CELERY_HYGIENE = {**settings.CELERY_HYGIENE, "ENQUEUE_MAX_RESENDS": 2}
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    key = f"lost-{uuid.uuid4().hex[:8]}"
    task_id = t.charge.apply_async_on_commit((key,), queue=queue)
    sent = 0
    for _ in range(3):
        EnqueueIntent.objects.update(next_attempt_at=EnqueueIntent.objects.get().created_at)
        sent += intents.relay(app).sent
    assert sent == 2
    assert not EnqueueIntent.objects.exists()
    dead = DeadLetter.objects.get(task_id=task_id)
    assert dead.reason == "undeliverable" and dead.args == [key]
    assert dead.entity == key
    assert intents.summary().undeliverable == 1
    delete_queue(app, queue)


@pytest.mark.django_db(transaction=True)
def test_operators_see_pending_intents_in_the_report_and_the_admin(admin_client):
    from io import StringIO

    from django.core.management import call_command

    # Written, never published: as if the producer died right after its COMMIT.
    intents.write(build_intent(t.charge, ("seen",), {}, {"queue": "nobody"}), using="default")
    out = StringIO()
    call_command("taskhygiene", "report", stdout=out)
    assert "Enqueue intents: 1 pending" in out.getvalue()
    page = admin_client.get("/admin/celery_hygiene/enqueueintent/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Enqueue intents: 1 pending" in text and "tests.testapp.tasks_enqueue.charge" in text
    assert "after COMMIT" in text


@pytest.mark.django_db(transaction=True)
def test_eager_mode_runs_on_commit_and_writes_no_intent(hygiene_app):
    key = f"eager-{uuid.uuid4().hex[:8]}"
    hygiene_app.conf.task_always_eager = True
    try:
        with transaction.atomic():
            t.notify.delay_on_commit(key)
            assert _effects(key, "notify") == 0
        assert _effects(key, "notify") == 1
    finally:
        hygiene_app.conf.task_always_eager = False
    assert not EnqueueIntent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_relays_at_the_same_moment_send_each_intent_once(hygiene_app, queue_name):
    """Two relay rounds started together over one backlog (as two workers' threads, or a
    worker and ``taskhygiene relay``): the second finds every due intent locked or moved."""
    keys = [f"race-{i}-{uuid.uuid4().hex[:6]}" for i in range(50)]
    for key in keys:  # written, never published: the producer died after its COMMIT
        intent = build_intent(t.charge, (key,), {}, {"queue": queue_name})
        intents.write(intent, using="default")
    EnqueueIntent.objects.update(next_attempt_at=timezone.now())
    start = threading.Barrier(2)
    rounds: list[intents.Round] = []

    def relay() -> None:
        try:
            start.wait(10)
            rounds.append(intents.relay(hygiene_app))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=relay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(r.sent for r in rounds) == len(keys)
    assert set(EnqueueIntent.objects.values_list("resends", flat=True)) == {1}
