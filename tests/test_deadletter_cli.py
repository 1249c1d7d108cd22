"""``manage.py deadletter``: listing, showing, replaying (to a real RabbitMQ queue), discarding,
purging. Dead letters are made by hand here; test_deadletter_replay_worker.py makes them through
a real worker."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from celery_hygiene.failures import replay as replay_module
from celery_hygiene.failures.replay import Outcome, replay
from celery_hygiene.models import ClaimStatus, DeadLetter, DeadLetterStatus, TaskClaim
from tests.conftest import declare_queue, delete_queue

RECORD = "tests.deadletter.record"

# A Celery app whose broker refuses connections: publishing through it fails at once.
unreachable_app = Celery(
    "unreachable", broker="amqp://guest:guest@127.0.0.1:1//", set_as_current=False
)
unreachable_app.conf.update(task_publish_retry=False, broker_connection_retry=False)
# tests.deadletter.record is a shared_task, so this app has it registered too.


def make(**fields: Any) -> DeadLetter:
    now = timezone.now()
    values: dict[str, Any] = {
        "task_name": RECORD,
        "task_id": str(uuid.uuid4()),
        "args": ["k1"],
        "kwargs": {"amount": 5},
        "queue": "",
        "reason": "exhausted",
        "exception_type": "ConnectionError",
        "exception_message": "gateway down",
        "traceback": (
            'Traceback (most recent call last):\n  File "x.py", line 1\n'
            "ConnectionError: gateway down"
        ),
        "attempts": 3,
        "first_failed_at": now - dt.timedelta(minutes=5),
        "last_failed_at": now,
    }
    values.update(fields)
    return DeadLetter.objects.create(**values)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("deadletter", *args, stdout=out, stderr=out)
    return out.getvalue()


def run_json(*args: str) -> Any:
    """stdout only, parsed: notes such as "showing 50 of 53" go to stderr."""
    out = io.StringIO()
    call_command("deadletter", *args, stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def fetch(app: Celery, queue: str) -> list[Any]:
    """Every message waiting in ``queue`` (consumed)."""
    messages = []
    with app.connection_for_read() as conn:
        bound = app.amqp.queues[queue](conn.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            messages.append(message)
    return messages


@pytest.fixture(autouse=True)
def project_app(hygiene_app: Celery) -> Celery:
    """As in a project whose ``proj/__init__.py`` imports its Celery app: it is current_app."""
    return hygiene_app


@pytest.fixture
def other_queue(hygiene_app: Celery) -> Iterator[str]:
    name = f"hygiene-test-{uuid.uuid4().hex[:10]}"
    declare_queue(hygiene_app, name)
    yield name
    delete_queue(hygiene_app, name)


# -- list / show -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_json_filters_and_shape():
    old = make(last_failed_at=timezone.now() - dt.timedelta(hours=5), task_id="old")
    timeout = make(exception_type="requests.exceptions.Timeout", task_id="timeout")
    done = make(status=DeadLetterStatus.REPLAYED, task_id="done")
    other = make(task_name="tests.deadletter.always_fails", task_id="other")

    everything = json.loads(run("list", "--json"))
    assert [item["task_id"] for item in everything] == ["other", "done", "timeout", "old"]
    item = everything[-1]
    assert {
        "id",
        "task_name",
        "args",
        "kwargs",
        "exception_type",
        "attempts",
        "status",
        "failed_at",
    } <= set(item)
    assert item["id"] == old.pk and item["args"] == ["k1"] and item["kwargs"] == {"amount": 5}
    assert item["failed_at"] == old.last_failed_at.isoformat()

    def ids(*args: str) -> list[int]:
        return [row["id"] for row in run_json("list", "--json", *args)]

    assert ids("--since", "2h", "--task", RECORD) == [done.pk, timeout.pk]
    assert ids("--status", "replayed") == [done.pk]
    assert ids("--exception", "Timeout") == [timeout.pk]  # short name matches the qualified one
    assert ids("--task", "tests.deadletter.always_fails") == [other.pk]
    assert ids("--limit", "1") == [other.pk]
    assert ids("--since", (timezone.now() - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")) == [
        other.pk,
        done.pk,
        timeout.pk,
    ]


@pytest.mark.django_db
def test_list_table_is_readable():
    make(entity="order-17", exception_message="gateway\ndown  hard")
    table = run("list")
    header, row = table.splitlines()
    assert header.split()[:4] == ["ID", "STATUS", "FAILED", "AT"]
    assert "pending" in row and RECORD in row and "ConnectionError: gateway down hard" in row
    assert "order-17" in row
    DeadLetter.objects.all().delete()
    assert run("list").strip() == "no dead letters match"


@pytest.mark.django_db
def test_payload_is_redacted_in_output_but_not_in_storage():
    dl = make(
        args=[{"user": "ann", "Password": "hunter2"}],
        kwargs={"card": {"number": "4111", "cvc_token": "t0k"}, "API_KEY": "abc", "note": "ok"},
    )
    listed = json.loads(run("list", "--json"))[0]
    assert listed["args"] == [{"user": "ann", "Password": "********"}]
    assert listed["kwargs"] == {
        "card": {"number": "4111", "cvc_token": "********"},
        "API_KEY": "********",
        "note": "ok",
    }
    shown = run("show", str(dl.pk))
    assert "hunter2" not in shown and "t0k" not in shown and "abc" not in shown
    assert '"user": "ann"' in shown
    dl.refresh_from_db()
    assert dl.args == [{"user": "ann", "Password": "hunter2"}]
    with override_settings(CELERY_HYGIENE={"REDACT_KEYS": ["note"]}):
        assert json.loads(run("list", "--json"))[0]["kwargs"]["note"] == "********"
        assert json.loads(run("list", "--json"))[0]["kwargs"]["API_KEY"] == "abc"


@pytest.mark.django_db
def test_show_prints_everything_including_the_traceback():
    first = make(status=DeadLetterStatus.REPLAYED)
    dl = make(entity="order-1", operation="charge", replay_of=first, headers={"root_id": "r1"})
    shown = run("show", str(dl.pk))
    assert (
        "Traceback (most recent call last):" in shown and "ConnectionError: gateway down" in shown
    )
    assert "order-1" in shown and "charge" in shown and f"replay_of          {first.pk}" in shown
    assert json.loads(run("show", str(first.pk), "--json"))["replays"] == [dl.pk]
    assert json.loads(run("show", str(dl.pk), "--json"))["headers"] == {"root_id": "r1"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "999999"), "no dead letter with id 999999"),
        (("list", "--task", "tests.deadletter.recrod"), "unknown task 'tests.deadletter.recrod'"),
        (("list", "--since", "2 hours"), "malformed time '2 hours'"),
        (("list", "--since", "2024-02-31"), "malformed time"),
        (("purge", "--older-than", "30"), "malformed duration '30'"),
        (("purge", "--older-than", "0d"), "greater than zero"),
        (("replay",), "say which dead letters"),
        (("replay", "1", "--all"), "not both"),
        (("replay", "--all", "--rate", "0"), "--rate must be greater than 0"),
    ],
)
def test_bad_input_fails_with_a_clear_message(args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        run(*args)


@pytest.mark.django_db
def test_unknown_task_suggests_close_names():
    with pytest.raises(CommandError, match="Did you mean: tests.deadletter.record"):
        run("replay", "--task", "tests.deadletter.recrod")


# -- replay ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_replay_republishes_the_original_message_once(hygiene_app, queue_name):
    dl = make(
        args=["k1", {"password": "real-secret"}],
        kwargs={"amount": 5},
        queue=queue_name,
        routing_key=queue_name,
        priority=3,
        headers={"root_id": "root-1", "parent_id": "parent-1"},
    )
    out = run("replay", str(dl.pk))
    assert f"[1/1] replayed {dl.pk} as task" in out

    dl.refresh_from_db()
    assert dl.status == DeadLetterStatus.REPLAYED
    assert dl.replayed_at is not None and dl.replayed_task_id not in ("", dl.task_id)
    [message] = fetch(hygiene_app, queue_name)
    headers = message.headers
    assert headers["task"] == RECORD and headers["id"] == dl.replayed_task_id
    assert headers["celery_hygiene_replay_of"] == dl.pk
    assert (headers["root_id"], headers["parent_id"]) == ("root-1", "parent-1")
    args, kwargs, _ = message.decode()
    assert args == ["k1", {"password": "real-secret"}]  # replays send the real values
    assert kwargs == {"amount": 5}
    assert message.properties["priority"] == 3

    with pytest.raises(CommandError, match=f"dead letter {dl.pk} is replayed as task"):
        run("replay", str(dl.pk))
    assert fetch(hygiene_app, queue_name) == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_replays_of_one_dead_letter_enqueue_it_once(hygiene_app, queue_name):
    dl = make(queue=queue_name)
    results: list[Any] = []

    def operator() -> None:
        try:
            results.append(replay(dl.pk))
        finally:
            connection.close()

    # Hold the row lock so both operators read the row while it is still pending, then race.
    with transaction.atomic():
        DeadLetter.objects.select_for_update().get(pk=dl.pk)
        threads = [threading.Thread(target=operator) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(r.outcome.value for r in results) == ["not_pending", "replayed"]
    assert len(fetch(hygiene_app, queue_name)) == 1


@pytest.mark.django_db(transaction=True)
def test_replay_reopens_the_dead_claim_for_the_new_task_id(queue_name, hygiene_app):
    TaskClaim.objects.create(
        entity="order-5",
        operation="charge",
        task_name=RECORD,
        status=ClaimStatus.DEAD,
        fingerprint="f" * 64,
        owner_task_id="original",
        attempts=3,
        completed_at=timezone.now(),
    )
    dl = make(queue=queue_name, entity="order-5", operation="charge")
    run("replay", str(dl.pk))
    dl.refresh_from_db()
    claim = TaskClaim.objects.get(entity="order-5", operation="charge")
    assert claim.status == ClaimStatus.RETRYING
    assert claim.owner_task_id == dl.replayed_task_id
    assert claim.attempts == 0 and claim.lease_expires_at is not None
    assert len(fetch(hygiene_app, queue_name)) == 1


@pytest.mark.django_db(transaction=True)
def test_unregistered_task_is_left_untouched(hygiene_app, queue_name):
    gone = make(task_name="shop.tasks.removed_last_year", queue=queue_name)
    ok = make(queue=queue_name)
    with pytest.raises(CommandError, match="'shop.tasks.removed_last_year' .* is not registered"):
        run("replay", str(ok.pk), str(gone.pk))
    # All-or-nothing for named ids: the good one was not sent either.
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"pending"}
    assert fetch(hygiene_app, queue_name) == []

    # By filter, the registered ones go and the unknown one is reported and stays pending.
    with pytest.raises(CommandError, match="1 of 2 dead letters were not replayed"):
        run("replay", "--all")
    gone.refresh_from_db()
    ok.refresh_from_db()
    assert (gone.status, gone.replayed_task_id) == ("pending", "")
    assert ok.status == "replayed"
    assert len(fetch(hygiene_app, queue_name)) == 1


@pytest.mark.django_db(transaction=True)
def test_truncated_payload_needs_force(hygiene_app, queue_name):
    dl = make(queue=queue_name, payload_truncated=True, payload_note="payload of 9 MB")
    with pytest.raises(CommandError, match="truncated payload \\(payload of 9 MB\\).*--force"):
        run("replay", str(dl.pk))
    assert fetch(hygiene_app, queue_name) == []
    run("replay", str(dl.pk), "--force")
    assert len(fetch(hygiene_app, queue_name)) == 1


@pytest.mark.django_db(transaction=True)
def test_queue_override_sends_elsewhere(hygiene_app, queue_name, other_queue):
    dl = make(queue=queue_name, routing_key=queue_name)
    with override_settings(CELERY_HYGIENE_QUEUES={other_queue: {"tasks": ["nothing.*"]}}):
        run("replay", str(dl.pk), "--queue", other_queue)
    assert fetch(hygiene_app, queue_name) == []
    [message] = fetch(hygiene_app, other_queue)
    assert message.headers["celery_hygiene_replay_of"] == dl.pk


@pytest.mark.django_db(transaction=True)
def test_queue_override_to_an_undeclared_queue_needs_force(hygiene_app, queue_name, other_queue):
    """`--queue recovry` (a typo) must not say "replayed" and park the message nowhere."""
    dl = make(queue=queue_name, routing_key=queue_name)
    typo = other_queue[:-1]
    with pytest.raises(CommandError, match=f"queue '{typo}' is not declared.*--force"):
        run("replay", str(dl.pk), "--queue", typo)
    with pytest.raises(CommandError, match="is not declared"):
        run("replay", "--all", "--queue", typo, "--dry-run")
    dl.refresh_from_db()
    assert dl.status == "pending" and fetch(hygiene_app, queue_name) == []
    # The app's own task_queues and default queue count as declared.
    default = hygiene_app.conf.task_default_queue  # "hygiene-tests", or HYGIENE_TEST_QUEUE
    assert default in replay_module.known_queues(hygiene_app)
    # --force sends it anyway (here to a queue that exists on the broker, as the operator says).
    run("replay", str(dl.pk), "--queue", other_queue, "--force")
    assert len(fetch(hygiene_app, other_queue)) == 1


@pytest.mark.django_db(transaction=True)
def test_publish_failure_puts_everything_back():
    TaskClaim.objects.create(
        entity="order-6",
        operation="charge",
        task_name=RECORD,
        status=ClaimStatus.DEAD,
        fingerprint="f" * 64,
        owner_task_id="original",
        attempts=3,
    )
    dl = make(entity="order-6", operation="charge")
    with (
        override_settings(
            CELERY_HYGIENE={"CELERY_APP": "tests.test_deadletter_cli.unreachable_app"}
        ),
        pytest.raises(CommandError, match="1 of 1 dead letters were not replayed"),
    ):
        run("replay", str(dl.pk))
    dl.refresh_from_db()
    assert (dl.status, dl.replayed_task_id, dl.replayed_at) == ("pending", "", None)
    claim = TaskClaim.objects.get(entity="order-6")
    assert claim.status == ClaimStatus.DEAD  # a duplicate cannot take over a half-done replay


class ClaimsOnTheirOwnDatabase:
    """A router that keeps claims on another database than the dead letters."""

    def db_for_read(self, model, **hints):  # noqa: ANN001, ANN201
        return "sqlite" if model is TaskClaim else None

    def db_for_write(self, model, **hints):  # noqa: ANN001, ANN201
        return "sqlite" if model is TaskClaim else None


@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_publish_failure_puts_the_claim_back_on_the_claims_database():
    with override_settings(
        DATABASE_ROUTERS=[ClaimsOnTheirOwnDatabase()],
        CELERY_HYGIENE={"CELERY_APP": "tests.test_deadletter_cli.unreachable_app"},
    ):
        TaskClaim.objects.create(
            entity="order-7",
            operation="charge",
            task_name=RECORD,
            status=ClaimStatus.DEAD,
            fingerprint="f" * 64,
            owner_task_id="original",
            attempts=3,
        )
        dl = make(entity="order-7", operation="charge")
        result = replay(dl.pk)
    assert result.outcome is Outcome.PUBLISH_FAILED
    dl.refresh_from_db()
    assert dl.status == DeadLetterStatus.PENDING
    claim = TaskClaim.objects.using("sqlite").get(entity="order-7")
    assert claim.status == ClaimStatus.DEAD  # not left "retrying" for a replay that never went
    assert not TaskClaim.objects.using("default").exists()


@pytest.mark.django_db(transaction=True)
def test_replay_inside_a_callers_transaction_waits_for_its_commit(hygiene_app, queue_name):
    dl = make(queue=queue_name)
    with transaction.atomic():
        result = replay(dl.pk)
        assert result.outcome is Outcome.SCHEDULED
        assert fetch(hygiene_app, queue_name) == []
    assert result.outcome is Outcome.REPLAYED
    assert len(fetch(hygiene_app, queue_name)) == 1


@pytest.mark.django_db(transaction=True)
def test_bulk_replay_by_filter_is_paced_and_shows_progress(hygiene_app, queue_name):
    picked = [make(queue=queue_name, task_id=f"pick-{i}") for i in range(5)]
    make(queue=queue_name, task_name="tests.deadletter.always_fails")  # other task
    make(queue=queue_name, last_failed_at=timezone.now() - dt.timedelta(days=3))  # too old
    make(queue=queue_name, status=DeadLetterStatus.DISCARDED)  # not pending

    dry = run("replay", "--task", RECORD, "--since", "1d", "--dry-run")
    assert "dry run: 5 of 5 would be replayed; nothing was changed" in dry
    assert DeadLetter.objects.filter(status="pending").count() == 7
    assert fetch(hygiene_app, queue_name) == []

    started = time.monotonic()
    out = run("replay", "--task", RECORD, "--since", "1d", "--rate", "10")
    elapsed = time.monotonic() - started
    assert elapsed >= 0.38  # 5 messages at 10/s: four gaps of 0.1 s
    assert [line.split()[0] for line in out.splitlines()[:5]] == [f"[{i}/5]" for i in range(1, 6)]
    assert "replayed 5 dead letters" in out
    assert set(
        DeadLetter.objects.filter(pk__in=[d.pk for d in picked]).values_list("status", flat=True)
    ) == {"replayed"}
    assert DeadLetter.objects.filter(status="pending").count() == 2
    assert len(fetch(hygiene_app, queue_name)) == 5


@pytest.mark.django_db(transaction=True)
def test_bulk_replay_pages_through_more_rows_than_one_batch(hygiene_app, queue_name, monkeypatch):
    from celery_hygiene.failures import replay as replay_module

    real = replay_module.pending_ids
    monkeypatch.setattr(
        "celery_hygiene.management.commands.deadletter.pending_ids",
        lambda selection: real(selection, batch_size=3),
    )
    for i in range(8):
        make(queue=queue_name, task_id=f"bulk-{i}")
    run("replay", "--all", "--rate", "1000", "--verbosity", "0")
    assert not DeadLetter.objects.filter(status="pending").exists()
    assert len(fetch(hygiene_app, queue_name)) == 8


# -- discard / purge -------------------------------------------------------------------------


@pytest.mark.django_db
def test_discard_by_id_and_by_filter():
    a, b = make(), make()
    c = make(exception_type="ValueError")
    replayed = make(status=DeadLetterStatus.REPLAYED)
    with pytest.raises(CommandError, match=f"{replayed.pk} is replayed"):
        run("discard", str(a.pk), str(replayed.pk))
    assert DeadLetter.objects.filter(status="discarded").count() == 0

    assert "discarded 1 dead letter" in run("discard", str(a.pk))
    assert "dry run: 1 would be discarded" in run(
        "discard", "--exception", "ValueError", "--dry-run"
    )
    run("discard", "--exception", "ValueError")
    statuses = dict(DeadLetter.objects.values_list("pk", "status"))
    assert statuses == {
        a.pk: "discarded",
        b.pk: "pending",
        c.pk: "discarded",
        replayed.pk: "replayed",
    }


@pytest.mark.django_db
def test_purge_deletes_old_handled_rows_in_batches():
    long_ago = timezone.now() - dt.timedelta(days=40)
    old_done = [make(status=s, last_failed_at=long_ago) for s in ("replayed", "discarded") * 3]
    old_pending = make(last_failed_at=long_ago)
    old_in_flight = make(status=DeadLetterStatus.REPLAYING, last_failed_at=long_ago)
    recent_done = make(status=DeadLetterStatus.REPLAYED)
    child = make(replay_of=old_done[0])

    assert "dry run: 6 dead letters" in run("purge", "--older-than", "30d", "--dry-run")
    assert DeadLetter.objects.count() == 10
    out = run("purge", "--older-than", "30d", "--batch-size", "4", "--verbosity", "2")
    assert "purged 4 so far" in out and "purged 6 dead letters that last failed before" in out
    assert out.rstrip().endswith(" UTC")
    assert set(DeadLetter.objects.values_list("pk", flat=True)) == {
        old_pending.pk,
        old_in_flight.pk,
        recent_done.pk,
        child.pk,
    }
    child.refresh_from_db()
    assert child.replay_of_id is None  # history link cleared, row kept

    run("purge", "--older-than", "30d", "--include-pending")
    assert set(DeadLetter.objects.values_list("pk", flat=True)) == {
        old_in_flight.pk,
        recent_done.pk,
        child.pk,
    }


# -- recover --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_recover_settles_rows_a_dead_publisher_left_in_replaying():
    from celery_hygiene.claims import state as claims
    from celery_hygiene.models import TaskClaim

    def stuck(entity: str) -> DeadLetter:
        """As replay() leaves it when the process dies after commit, before publishing."""
        row = make(
            status=DeadLetterStatus.REPLAYING,
            replayed_task_id=f"replay-{entity}",
            entity=entity,
            operation="op" if entity else "",
        )
        if entity:
            TaskClaim.objects.create(
                entity=entity,
                operation="op",
                task_name=RECORD,
                status="dead",
                fingerprint="f",
                owner_task_id="first",
                attempts=3,
            )
            assert claims.reopen(entity, "op", owner_task_id=f"replay-{entity}", lease_seconds=60)
        return row

    never_sent, ran, no_claim, pending = stuck("e1"), stuck("e2"), stuck(""), make()
    key = claims.ClaimKey("e2", "op", RECORD, "f")
    acquired = claims.acquire(
        key, owner_task_id="replay-e2", owner_worker="w", lease_seconds=60, using="default"
    )
    assert acquired.outcome is claims.Outcome.ACQUIRED  # the replay of e2 reached a worker

    out = run("recover", str(never_sent.pk), str(ran.pk))
    assert "never ran; pending again" in out and "ran; marked replayed" in out
    never_sent.refresh_from_db()
    ran.refresh_from_db()
    # The id of the replay that never ran is kept as evidence; a new replay overwrites it.
    assert (never_sent.status, never_sent.replayed_task_id) == ("pending", "replay-e1")
    assert ran.status == "replayed" and ran.replayed_at is not None
    # The lost message, should it surface, now finds a dead claim and does nothing.
    assert TaskClaim.objects.get(entity="e1").status == "dead"

    with pytest.raises(CommandError, match="not recovered"):
        run("recover", str(no_claim.pk), str(pending.pk))
    no_claim.refresh_from_db()
    assert no_claim.status == "replaying"  # nothing proves it was not sent: needs --force
    assert "pending again" in run("recover", str(no_claim.pk), "--force")
