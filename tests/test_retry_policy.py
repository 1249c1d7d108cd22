"""RetryPolicy: a pure function of attempt, exception and elapsed time (no services needed)."""

from __future__ import annotations

import math

import pytest
from django.test import override_settings
from tenacity import (
    stop_after_delay,
    wait_exponential,
    wait_fixed,
    wait_random,
    wait_random_exponential,
)

from celery_hygiene import RetryPolicy, hygienic_task
from celery_hygiene.exceptions import HygieneConfigurationError
from celery_hygiene.failures.retry import DEFAULT_POLICY


def test_issue_example_policy_retries_retryable_and_gives_up_on_value_error():
    policy = RetryPolicy(
        max_attempts=5,
        wait=wait_exponential(multiplier=2, max=300) + wait_random(0, 1),
        retry_on=(TimeoutError, ConnectionError),
        give_up_on=(ValueError,),
    )
    decisions = [policy.decide(attempt=n, exc=TimeoutError()) for n in range(1, 6)]
    assert [d.retry for d in decisions] == [True, True, True, True, False]
    assert decisions[-1].reason == "exhausted"
    countdowns = [d.countdown for d in decisions[:-1]]
    assert countdowns == sorted(countdowns)  # exponential growth dominates the 1 s jitter
    assert policy.decide(attempt=1, exc=ValueError()).reason == "gave_up"
    assert policy.decide(attempt=1, exc=KeyError()).reason == "gave_up"  # not in retry_on


def test_give_up_on_wins_over_retry_on_for_subclasses():
    policy = RetryPolicy(max_attempts=3, retry_on=(OSError,), give_up_on=(PermissionError,))
    assert policy.decide(attempt=1, exc=ConnectionError()).retry
    assert not policy.decide(attempt=1, exc=PermissionError()).retry


def test_full_jitter_never_schedules_an_immediate_retry():
    policy = RetryPolicy(
        max_attempts=50, wait=wait_random_exponential(multiplier=0.001), min_delay=0.5
    )
    assert min(policy.countdown(n) for n in range(1, 50) for _ in range(20)) >= 0.5


def test_countdown_is_clamped_to_max_delay():
    policy = RetryPolicy(max_attempts=30, wait=wait_exponential(multiplier=1), max_delay=60)
    assert policy.countdown(29) == 60


def test_elapsed_bound_and_tenacity_stop_end_retries():
    policy = RetryPolicy(max_attempts=10, wait=wait_fixed(10), max_elapsed=100)
    assert policy.decide(attempt=2, exc=Exception(), elapsed=50).retry
    assert policy.decide(attempt=2, exc=Exception(), elapsed=95).reason == "deadline"
    stopping = RetryPolicy(max_attempts=10, stop=stop_after_delay(30))
    assert stopping.decide(attempt=2, exc=Exception(), elapsed=10).retry
    assert not stopping.decide(attempt=2, exc=Exception(), elapsed=31).retry


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": None}, "hard cap"),
        ({"max_attempts": math.inf}, "hard cap"),
        ({"max_attempts": 0}, "between 1 and"),
        ({"max_attempts": 3, "max_delay": math.inf}, "finite number"),
        ({"max_attempts": 3, "max_delay": None}, "finite number"),
        ({"max_attempts": 3, "min_delay": 10, "max_delay": 5}, "above max_delay"),
        ({"max_attempts": 3, "retry_on": ("TimeoutError",)}, "exception classes"),
        ({"max_attempts": 3, "wait": 5}, "wait strategy"),
    ],
)
def test_unbounded_or_malformed_policies_are_refused(kwargs, message):
    with pytest.raises(HygieneConfigurationError, match=message):
        RetryPolicy(**kwargs)


def test_refused_at_decoration_time():
    with pytest.raises(HygieneConfigurationError, match="hard cap"):

        @hygienic_task(retry={"max_attempts": None})
        def forever() -> None: ...


def test_project_default_policy_comes_from_settings():
    @hygienic_task(name="tests.policy_default_probe")
    def probe() -> None: ...

    assert probe.hygiene_policy() == DEFAULT_POLICY
    with override_settings(CELERY_HYGIENE={"DEFAULT_RETRY_POLICY": {"max_attempts": 2}}):
        assert probe.hygiene_policy().max_attempts == 2
    with override_settings(CELERY_HYGIENE={"DEFAULT_RETRY_POLICY": RetryPolicy(max_attempts=7)}):
        assert probe.hygiene_policy().max_attempts == 7


def test_decorator_aligns_celery_max_retries_with_the_cap():
    @hygienic_task(retry=RetryPolicy(max_attempts=4), name="tests.policy_cap_probe")
    def capped() -> None: ...

    assert capped.max_retries == 3
