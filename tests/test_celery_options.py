"""Celery's own retry options on our decorators: translated into a RetryPolicy (issue 14, item 2).

Unit tests of the translation, then real-worker tests of what a moved task does: autoretry with
backoff, a body that calls ``self.retry()`` itself, and the end of both (a dead letter).
"""

from __future__ import annotations

import random

import pytest
from celery import Celery
from celery.utils.time import get_exponential_backoff_interval
from tenacity import wait_fixed

from celery_hygiene import RetryPolicy, hygienic_task, idempotent_task
from celery_hygiene.exceptions import HygieneConfigurationError
from celery_hygiene.failures.retry import policy_from_celery_options, wait_celery_backoff
from celery_hygiene.models import DeadLetter
from celery_hygiene.task.decorators import for_app
from tests.conftest import wait_until
from tests.testapp import tasks_adopt as t
from tests.testapp.models import Attempt, SideEffect


def test_backoff_matches_celerys_own_arithmetic_draw_for_draw():
    policy = policy_from_celery_options(
        {"retry_backoff": 3, "retry_backoff_max": 100, "retry_jitter": True, "max_retries": 9}
    )
    for attempt in range(1, 10):
        random.seed(attempt)
        ours = policy.countdown(attempt)
        random.seed(attempt)
        celerys = get_exponential_backoff_interval(3, attempt - 1, 100, full_jitter=True)
        assert ours == celerys
    no_jitter = policy_from_celery_options({"retry_backoff": True, "retry_jitter": False})
    assert [no_jitter.countdown(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert no_jitter.max_attempts == 4  # Celery's default max_retries=3
    capped = policy_from_celery_options({"retry_backoff": 1, "retry_jitter": False})
    assert capped.countdown(20) == 600  # Celery's default retry_backoff_max


def test_options_map_onto_the_policy():
    policy = policy_from_celery_options(
        {
            "autoretry_for": (ConnectionError,),
            "dont_autoretry_for": (ConnectionRefusedError,),
            "max_retries": 5,
            "default_retry_delay": 7,
        }
    )
    assert policy.max_attempts == 6
    assert policy.retry_on == (ConnectionError,) and policy.give_up_on == (ConnectionRefusedError,)
    assert isinstance(policy.wait, wait_fixed) and policy.countdown(3) == 7
    assert policy.max_elapsed is None and policy.min_delay == 0
    assert not policy.decide(attempt=1, exc=ConnectionRefusedError()).retry
    assert policy.decide(attempt=5, exc=ConnectionError()).retry
    assert policy.decide(attempt=6, exc=ConnectionError()).reason == "exhausted"
    # retry_kwargs overrides, as in Celery's autoretry.
    override = policy_from_celery_options({"max_retries": 5, "retry_kwargs": {"max_retries": 1}})
    assert override.max_attempts == 2
    assert policy_from_celery_options({"retry_kwargs": {"countdown": 4}}).countdown(1) == 4
    # Without autoretry_for: every exception, as for any hygiene task (RetryPolicy's default).
    assert policy_from_celery_options({"max_retries": 2}).retry_on == (Exception,)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": None}, "Retrying forever is a bug"),
        ({"retry_kwargs": {"queue": "x"}}, "cannot be translated"),
        ({"autoretry_for": (ConnectionError, "nope")}, "tuple of exception classes"),
    ],
)
def test_untranslatable_options_are_refused(options, message):
    with pytest.raises(HygieneConfigurationError, match=message):
        policy_from_celery_options(options)


def test_decorators_translate_and_hide_celerys_autoretry():
    @hygienic_task(name="tests.adopt.probe_autoretry", autoretry_for=(KeyError,), max_retries=4)
    def probe() -> None: ...

    assert probe.hygiene_retry.max_attempts == 5
    assert probe.max_retries == 4
    assert probe.hygiene_retry.retry_on == (KeyError,)
    assert not hasattr(probe, "_orig_run")  # Celery's autoretry wrapper is not installed too

    @idempotent_task(
        entity="key", name="tests.adopt.probe_delay", max_retries=1, default_retry_delay=9
    )
    def delayed(key: str) -> None: ...

    assert delayed.default_retry_delay == 9  # a body's own self.retry() waits the same
    assert delayed.hygiene_retry.countdown(1) == 9


def test_retry_and_celery_options_together_are_a_clear_error():
    with pytest.raises(HygieneConfigurationError, match=r"retry= and Celery's retry options"):

        @hygienic_task(retry=RetryPolicy(max_attempts=2), retry_backoff=True)
        def both() -> None: ...


def test_for_app_binds_the_decorators_once():
    app = Celery("adopt-probe", set_as_current=False)
    hygienic, idempotent = for_app(app)

    @hygienic(name="tests.adopt.bound_plain")
    def plain() -> None: ...

    @idempotent(entity="key", name="tests.adopt.bound_idem")
    def idem(key: str) -> None: ...

    @for_app(app).hygienic_task
    def bare() -> None: ...

    assert {"tests.adopt.bound_plain", "tests.adopt.bound_idem"} <= set(app.tasks)
    assert plain.app is app and idem.app is app and bare.app is app


def test_wait_celery_backoff_repr_names_its_arguments():
    assert "factor=2" in repr(wait_celery_backoff(factor=2))


# -- through a real worker ---------------------------------------------------------------------

worker_test = pytest.mark.worker


def _dead_letter(task_id: str) -> DeadLetter:
    wait_until(lambda: DeadLetter.objects.filter(task_id=task_id).exists(), timeout=40)
    return DeadLetter.objects.get(task_id=task_id)


@worker_test
def test_autoretry_options_retry_with_backoff_then_dead_letter(worker, queue_name):
    failing = t.celery_autoretry.apply_async(("a1",), queue=queue_name)
    flaky = t.celery_autoretry.apply_async(("a2", "flaky"), queue=queue_name)
    refused = t.celery_autoretry.apply_async(("a3", "refused"), queue=queue_name)

    assert flaky.get(timeout=40) == "done:a2"
    dead = _dead_letter(failing.id)
    assert dead.reason == "exhausted" and dead.attempts == 3
    assert dead.exception_type == "ConnectionError"
    assert Attempt.objects.filter(task="celery_autoretry", key="a1").count() == 3
    gave_up = _dead_letter(refused.id)  # dont_autoretry_for: no retry at all
    assert gave_up.reason == "gave_up" and gave_up.attempts == 1
    assert "task_retry_scheduled task=tests.testapp.tasks_adopt.celery_autoretry" in worker.log()


@worker_test
def test_body_self_retry_counts_against_the_cap_and_ends_as_a_dead_letter(worker, queue_name):
    with_exc = t.self_retrying.apply_async(("s1",), queue=queue_name)
    without_exc = t.self_retrying.apply_async(("s2", False), queue=queue_name)

    dead = _dead_letter(with_exc.id)
    # max_retries=2: three runs; then Celery re-raises the exception given to self.retry(exc=).
    assert Attempt.objects.filter(task="self_retrying", key="s1").count() == 3
    assert dead.attempts == 3 and dead.exception_type == "ConnectionError"
    assert dead.reason == "exhausted"
    assert not SideEffect.objects.filter(entity="s1").exists()

    bare = _dead_letter(without_exc.id)
    assert Attempt.objects.filter(task="self_retrying", key="s2").count() == 3
    assert bare.attempts == 3 and bare.exception_type.endswith("MaxRetriesExceededError")
    assert bare.reason == "exhausted"
    # The body's own except saw it first (it re-raised, so the dead letter still happened).
    assert SideEffect.objects.filter(entity="s2", kind="body-saw-max-retries").count() == 1


@worker_test
def test_idempotent_self_retry_ends_as_a_dead_letter_and_a_dead_claim(worker, queue_name):
    from celery_hygiene.models import TaskClaim

    result = t.idempotent_self_retrying.apply_async((77,), queue=queue_name)
    dead = _dead_letter(result.id)
    assert Attempt.objects.filter(task="idempotent_self_retrying", key="77").count() == 2
    assert dead.attempts == 2 and dead.exception_type == "TimeoutError"
    assert dead.reason == "exhausted"
    assert TaskClaim.objects.get(entity="77", operation="adopt-charge").status == "dead"


def test_for_app_binds_singleton_task_too():
    app = Celery("adopt-probe-singleton", set_as_current=False)
    bound = for_app(app)

    @bound.singleton_task
    def sweep() -> None: ...

    @bound.singleton_task(key="tenant", name="tests.adopt.bound_singleton")
    def per_tenant(tenant: str) -> None: ...

    assert bound.app is app and len(bound) == 2  # unpacks as (hygienic_task, idempotent_task)
    assert sweep.app is app and per_tenant.app is app
    assert "tests.adopt.bound_singleton" in app.tasks
    assert per_tenant.hygiene_idempotency is not None
    assert per_tenant.hygiene_idempotency.singleton
