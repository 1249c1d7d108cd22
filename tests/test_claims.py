"""The claim state machine on its own, against real PostgreSQL and SQLite connections."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connections

from celery_hygiene.claims import state as claims
from celery_hygiene.claims.keys import MAX_KEY_LENGTH, fingerprint, normalize_key
from celery_hygiene.claims.state import ClaimKey, Outcome
from celery_hygiene.models import ClaimStatus, TaskClaim

BOTH = pytest.mark.parametrize("alias", ["default", "sqlite"])


def key(entity: str = "order-1", fp: str = "fp-1") -> ClaimKey:
    return ClaimKey(entity=entity, operation="charge", task_name="shop.charge", fingerprint=fp)


def acquire(
    alias: str, k: ClaimKey, owner: str, lease: float = 30.0, token: int | None = None
) -> claims.ClaimResult:
    return claims.acquire(
        k,
        owner_task_id=owner,
        owner_worker="w@test",
        lease_seconds=lease,
        using=alias,
        retry_token=token,
    )


@BOTH
@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_acquire_complete_duplicate(alias):
    first = acquire(alias, key(), "t1")
    assert first.outcome is Outcome.ACQUIRED and first.ticket.attempts == 1
    assert claims.complete(first.ticket, '{"ok": true}')

    again = acquire(alias, key(), "t2")
    assert again.outcome is Outcome.SUCCEEDED
    assert again.existing.result_json == '{"ok": true}'
    assert again.existing.owner_task_id == "t1"


@BOTH
@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_live_lease_blocks_and_expired_lease_is_taken_over(alias):
    held = acquire(alias, key(), "t1", lease=1.0)
    busy = acquire(alias, key(), "t2")
    # SQLite reads its own clock for "now" and the worker's for the lease end: allow skew.
    assert busy.outcome is Outcome.IN_PROGRESS and 0 < busy.wait_seconds <= 1.05
    # Same task id redelivered while the lease is live: also waits (the owner may be alive).
    assert acquire(alias, key(), "t1").outcome is Outcome.IN_PROGRESS

    time.sleep(1.1)
    taken = acquire(alias, key(), "t2")
    assert taken.outcome is Outcome.ACQUIRED and taken.ticket.attempts == 2
    # The old owner's completion is fenced off by the attempt number.
    assert not claims.complete(held.ticket, '"stale"')
    assert claims.complete(taken.ticket, '"fresh"')
    assert TaskClaim.objects.using(alias).get().result_json == '"fresh"'


@BOTH
@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_retry_hands_the_claim_to_the_same_task_id_only(alias):
    first = acquire(alias, key(), "t1")
    assert claims.release_for_retry(first.ticket, countdown=5, error="boom")
    assert acquire(alias, key(), "other").outcome is Outcome.IN_PROGRESS
    retried = acquire(alias, key(), "t1", token=first.ticket.attempts)
    assert retried.outcome is Outcome.ACQUIRED and retried.ticket.attempts == 2


@BOTH
@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_a_resent_copy_with_the_same_task_id_cannot_fork_the_retry_chain(alias):
    """Only the scheduled retry (carrying the attempt it was released at) resumes the claim."""
    first = acquire(alias, key(), "t1")
    assert claims.release_for_retry(first.ticket, countdown=5, error="boom")
    assert acquire(alias, key(), "t1").outcome is Outcome.IN_PROGRESS  # a re-sent original
    assert acquire(alias, key(), "t1", token=7).outcome is Outcome.IN_PROGRESS  # a stale retry
    retry = acquire(alias, key(), "t1", token=1)
    assert retry.outcome is Outcome.ACQUIRED and retry.ticket.attempts == 2
    assert acquire(alias, key(), "t1", token=1).outcome is Outcome.IN_PROGRESS  # twice: no


@pytest.mark.django_db(transaction=True)
def test_renew_pushes_only_this_workers_running_claims_forward_in_one_statement():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from celery_hygiene.models import TaskClaim

    mine = acquire("default", key("a"), "t-a", lease=1.0)
    acquire("default", key("b"), "t-b", lease=1.0)
    claims.complete(acquire("default", key("c"), "t-c", lease=1.0).ticket, None)
    held = [
        claims.Held("a", "charge", "t-a", 60.0),
        claims.Held("b", "charge", "t-wrong-owner", 60.0),
        claims.Held("c", "charge", "t-c", 60.0),
    ]
    with CaptureQueriesContext(connection) as queries:
        assert claims.renew(held, worker="w@test") == 1
    assert len(queries) == 1
    assert claims.renew(held, worker="another@host") == 0
    leases = dict(TaskClaim.objects.values_list("entity", "lease_expires_at"))
    assert (leases["a"] - leases["b"]).total_seconds() > 50
    assert leases["c"] is None
    assert mine.ticket is not None


@BOTH
@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_dead_claims_stop_duplicates_until_reopened_for_a_replay(alias):
    first = acquire(alias, key(), "t1")
    assert claims.mark_dead(first.ticket, error="gave up")
    assert acquire(alias, key(), "t2").outcome is Outcome.DEAD
    assert claims.reopen(
        "order-1", "charge", owner_task_id="replay-1", lease_seconds=60, using=alias
    )
    assert acquire(alias, key(), "t2").outcome is Outcome.IN_PROGRESS
    replay = acquire(alias, key(), "replay-1")
    assert replay.outcome is Outcome.ACQUIRED and replay.ticket.attempts == 1


@BOTH
@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_different_arguments_never_take_over_an_expired_lease(alias):
    acquire(alias, key(fp="fp-1"), "t1", lease=0.01)
    time.sleep(0.05)
    other = acquire(alias, key(fp="fp-2"), "t2")
    assert other.outcome is Outcome.IN_PROGRESS
    assert other.existing.fingerprint == "fp-1"


@BOTH
@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_long_and_unicode_keys(alias):
    long_key = "客户:" + "ß" * 1000
    nul_key = "a\x00b"
    for entity in (long_key, nul_key, "emoji-🧾", ""):
        normalized = normalize_key(entity) if entity else "∅"
        result = acquire(alias, key(entity=normalized), f"t-{len(entity)}")
        assert result.outcome is Outcome.ACQUIRED
    stored = set(TaskClaim.objects.using(alias).values_list("entity", flat=True))
    assert normalize_key(long_key) in stored and "emoji-🧾" in stored
    assert all(len(e) <= MAX_KEY_LENGTH for e in stored)
    assert normalize_key(long_key).startswith("客户:ßßß")  # the readable part is kept
    assert normalize_key(long_key) != normalize_key(long_key + "x")
    assert "\x00" not in normalize_key(nul_key)


def test_fingerprint_ignores_key_order():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


@pytest.mark.django_db(transaction=True)
def test_racing_connections_exactly_one_acquires():
    """Twenty threads, each with its own PostgreSQL connection, race for one key."""
    barrier = threading.Barrier(20)
    outcomes: list[Outcome] = []

    def race(n: int) -> None:
        barrier.wait()
        try:
            outcomes.append(acquire("default", key(entity="hot"), f"t{n}").outcome)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=race, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(Outcome.ACQUIRED) == 1
    assert outcomes.count(Outcome.IN_PROGRESS) == 19


@pytest.mark.django_db(transaction=True)
def test_claim_uses_no_session_state():
    """PgBouncer transaction mode: no advisory locks or SET outside a transaction."""
    statements: list[str] = []

    def record(execute, sql, params, many, context):  # noqa: ANN001
        statements.append(sql)
        return execute(sql, params, many, context)

    with connections["default"].execute_wrapper(record):
        first = acquire("default", key(entity="pgb"), "t1")
        claims.complete(first.ticket, "1")
    assert len(statements) == 2  # the happy path: claim, complete
    assert not any(
        "advisory" in s.lower() or s.lstrip().upper().startswith("SET ") for s in statements
    )


@pytest.mark.django_db(transaction=True)
def test_claim_lookup_uses_the_unique_index():
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "EXPLAIN SELECT 1 FROM celery_hygiene_taskclaim WHERE entity = %s AND operation = %s",
            ["x", "y"],
        )
        plan = " ".join(row[0] for row in cursor.fetchall())
    assert "celery_hygiene_claim_entity_operation" in plan
    assert ClaimStatus.RUNNING == "running"


@pytest.mark.django_db(transaction=True)
def test_stale_claims_are_listed_for_operators():
    """Work that started, lost its worker and its message, and that nobody has taken over."""
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    abandoned = acquire("default", key(entity="abandoned"), "t-lost", lease=0.01)
    live = acquire("default", key(entity="live"), "t-live", lease=300)
    done = acquire("default", key(entity="done"), "t-done", lease=0.01)
    claims.complete(done.ticket, "1")
    assert abandoned.outcome is live.outcome is Outcome.ACQUIRED
    time.sleep(1.1)

    out = StringIO()
    call_command("taskhygiene", "claims", "--stale", "--expired-for", "1s", "--json", stdout=out)
    import json

    rows = json.loads(out.getvalue())
    assert [(r["entity"], r["owner_task_id"]) for r in rows] == [("abandoned", "t-lost")]
    with pytest.raises(CommandError, match="malformed duration"):
        call_command("taskhygiene", "claims", "--stale", "--expired-for", "soon")


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_reads_and_writes_nothing():
    """No row lock, no write: a duplicate does not pay for a flushed commit."""
    first = acquire("default", key(entity="dup-cost"), "t1")
    claims.complete(first.ticket, "1")

    def row_version() -> tuple:
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT xmin::text, xmax::text FROM celery_hygiene_taskclaim WHERE entity = %s",
                ["dup-cost"],
            )
            return cursor.fetchone()

    before = row_version()
    statements: list[str] = []

    def record(execute, sql, params, many, context):  # noqa: ANN001
        statements.append(sql)
        return execute(sql, params, many, context)

    with connections["default"].execute_wrapper(record):
        assert acquire("default", key(entity="dup-cost"), "t2").outcome is Outcome.SUCCEEDED
    assert row_version() == before == (before[0], "0")  # not even locked (xmax stays 0)
    assert len(statements) == 2 and "DO NOTHING" in statements[0]


@pytest.mark.django_db(transaction=True)
def test_prepared_statements_give_the_same_outcomes(settings):
    """PREPARED_STATEMENTS: server-side binding and prepare, same state machine."""
    settings.CELERY_HYGIENE = {"PREPARED_STATEMENTS": True}
    for round_no in range(7):  # past psycopg's usual threshold: really prepared by now
        entity = f"prepared-{round_no}"
        first = acquire("default", key(entity=entity), "t1")
        assert first.outcome is Outcome.ACQUIRED
        duplicate = acquire("default", key(entity=entity), "t2")
        assert duplicate.outcome is Outcome.IN_PROGRESS and duplicate.wait_seconds > 0
        assert claims.complete(first.ticket, '{"n": 1}')
        done = acquire("default", key(entity=entity), "t3")
        assert done.outcome is Outcome.SUCCEEDED and done.existing.result_json == '{"n": 1}'
        assert not claims.complete(first.ticket, "2")  # fenced: already succeeded


def test_fingerprint_treats_equal_numbers_as_equal():
    from decimal import Decimal

    assert fingerprint({"amount": Decimal("1.0")}) == fingerprint({"amount": Decimal("1.00")})
    assert fingerprint({"amount": 1}) == fingerprint({"amount": 1.0})
    assert fingerprint({"amount": Decimal("2.50")}) == fingerprint({"amount": 2.5})
    assert fingerprint({"amount": 1}) != fingerprint({"amount": 2})
    assert fingerprint({"amount": 1}) != fingerprint({"amount": "1"})
    assert fingerprint({"flag": True}) != fingerprint({"flag": 1})


def test_fingerprint_of_a_set_is_the_same_in_every_process():
    """String hashing is randomized per process, so a set's iteration order differs."""
    import subprocess
    import sys

    code = (
        "from celery_hygiene.claims.keys import fingerprint;"
        "print(fingerprint({'tags': {'alpha', 'beta', 'gamma', 'delta', 'epsilon'}}))"
    )
    prints = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in (1, 2, 3, 4)
    }
    assert len(prints) == 1


def test_fingerprint_accepts_mixed_key_types_and_tuples_equal_lists():
    assert fingerprint({"m": {1: "a", "1": "b", None: "c"}}) == fingerprint(
        {"m": {None: "c", "1": "b", 1: "a"}}
    )
    assert fingerprint({"xs": (1, 2)}) == fingerprint({"xs": [1, 2]})


@pytest.mark.django_db(transaction=True)
def test_a_lone_surrogate_key_is_stored_not_refused():
    entity = normalize_key("order-\ud800-1")
    entity.encode("utf-8")  # storable as PostgreSQL text
    claim = acquire("default", key(entity), "t1")
    assert claim.outcome is Outcome.ACQUIRED
    assert normalize_key("order-\ud800-1") == entity
    assert normalize_key("order-\ud800-1") != normalize_key("order-\ud801-1")


@pytest.mark.django_db
def test_dead_letter_with_unstorable_text_is_kept_escaped():
    import datetime as dt

    from celery_hygiene.failures import deadletters

    now = dt.datetime.now(dt.UTC)
    failed = deadletters.FailedTask(
        task_name="shop.t",
        task_id="id-1",
        args=["a\ud800b", "nul\x00"],
        kwargs={},
        exception=ValueError("x"),
        reason="gave_up",
        attempts=1,
        first_failed_at=now,
        last_failed_at=now,
    )
    stored = deadletters.store(failed)
    stored.refresh_from_db()
    assert stored.payload_truncated and "NUL or unpaired surrogate" in stored.payload_note
    assert "\\ud800" in stored.args[0]


@BOTH
@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_recurring_work_restarts_a_claim_that_finished_long_enough_ago(alias):
    first = acquire(alias, key(), "t1")
    assert claims.complete(first.ticket, '"one"')

    def again(owner: str, after: float) -> claims.ClaimResult:
        return claims.acquire(
            key(fp="fp-2"),  # the next period's run may have other arguments
            owner_task_id=owner,
            owner_worker="w@test",
            lease_seconds=30,
            using=alias,
            reclaim_after=after,
        )

    assert again("t2", after=3600).outcome is Outcome.SUCCEEDED  # inside the window: duplicate
    second = again("t3", after=0)
    assert second.outcome is Outcome.ACQUIRED and second.ticket.attempts == 1
    assert again("t4", after=0).outcome is Outcome.IN_PROGRESS  # one run at a time
    assert claims.mark_dead(second.ticket, error="failed")
    assert again("t5", after=0).outcome is Outcome.DEAD  # a dead run blocks window tasks...
    singleton = claims.acquire(
        key(),
        owner_task_id="t6",
        owner_worker="w@test",
        lease_seconds=30,
        using=alias,
        reclaim_dead=True,
    )
    assert singleton.outcome is Outcome.ACQUIRED  # ... but not singletons


@BOTH
@pytest.mark.django_db(databases=["default", "sqlite"], transaction=True)
def test_a_singleton_takes_over_an_expired_lease_whatever_the_arguments(alias):
    crashed = acquire(alias, key(fp="tick-1"), "t1", lease=0.0)  # its owner stopped renewing
    assert crashed.outcome is Outcome.ACQUIRED

    def take(owner: str, fp: str, *, singleton: bool) -> claims.ClaimResult:
        return claims.acquire(
            key(fp=fp),
            owner_task_id=owner,
            owner_worker="w@test",
            lease_seconds=30,
            using=alias,
            any_fingerprint=singleton,
        )

    # An idempotent task's other arguments are other work: they wait for the owner's key.
    assert take("t2", "tick-2", singleton=False).outcome is Outcome.IN_PROGRESS
    taken = take("t3", "tick-2", singleton=True)
    assert taken.outcome is Outcome.ACQUIRED
    assert taken.ticket.attempts == 1  # a new run: the whole retry policy
    row = TaskClaim.objects.using(alias).get(entity="order-1")
    assert (row.owner_task_id, row.fingerprint) == ("t3", "tick-2")
    assert take("t4", "tick-3", singleton=True).outcome is Outcome.IN_PROGRESS  # live lease
    assert not claims.complete(crashed.ticket, "1")  # the crashed owner is fenced off


@pytest.mark.django_db(transaction=True)
def test_async_completion_is_one_statement_and_leaves_no_session_state(settings):
    """ASYNC_COMPLETION: same fencing, visible at once, synchronous_commit back to 'on' after."""
    settings.CELERY_HYGIENE = {"ASYNC_COMPLETION": True}
    first = acquire("default", key(entity="async-1"), "t1")
    assert claims.complete(first.ticket, '{"n": 1}')
    assert not claims.complete(first.ticket, "2")  # fenced: already succeeded
    done = acquire("default", key(entity="async-1"), "t2")
    assert done.outcome is Outcome.SUCCEEDED and done.existing.result_json == '{"n": 1}'
    with connections["default"].cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
    assert not connections["default"].connection.info.transaction_status  # IDLE
    # A failing completion (a value the column refuses) leaves no open transaction behind.
    other = acquire("default", key(entity="async-2"), "t3")
    with pytest.raises(Exception):  # noqa: B017, PT011 - DataError from the server
        claims.complete(other.ticket, "\x00")
    assert not connections["default"].connection.info.transaction_status
    assert claims.complete(other.ticket, "3")
