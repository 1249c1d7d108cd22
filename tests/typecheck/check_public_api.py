"""Type-checked by mypy (``make typecheck``), never run: the rest of the public API as a user's
type checker sees it. Same conventions as check_decorators.py: ``# type: ignore[code]`` lines
must fail with that code.
"""

# mypy: warn-unused-ignores, enable-error-code="ignore-without-code"

from __future__ import annotations

from typing import Any, Unpack, assert_type

from celery import Celery
from django.dispatch import Signal, receiver
from tenacity import wait_fixed

from celery_hygiene import HygieneTask, RetryPolicy
from celery_hygiene.models import DeadLetter
from celery_hygiene.replay import Outcome, ReplayResult, replay
from celery_hygiene.retry import Decision
from celery_hygiene.routing import QueueDeclaration, QueueSpec, configure_queues
from celery_hygiene.signals import (
    TaskDeadLetteredPayload,
    TaskOverDurationPayload,
    task_dead_lettered,
    task_over_duration,
)

app = Celery("typecheck")

# -- RetryPolicy ----------------------------------------------------------------------------------

policy = RetryPolicy(
    max_attempts=5,
    wait=wait_fixed(10),
    retry_on=(TimeoutError, ConnectionError),
    give_up_on=(ValueError,),
    max_delay=600,
)
assert_type(policy.max_attempts, int)
assert_type(policy.max_elapsed, float | None)
RetryPolicy()  # type: ignore[call-arg]
RetryPolicy(max_attempts=None)  # type: ignore[arg-type]
RetryPolicy(max_attempts=3, wait=10)  # type: ignore[arg-type]
RetryPolicy(max_attempts=3, retry_on=[TimeoutError])  # type: ignore[arg-type]
policy.max_attempts = 6  # type: ignore[misc]
assert_type(policy.decide(attempt=1, exc=TimeoutError(), elapsed=1.0), Decision)
policy.decide(1, TimeoutError())  # type: ignore[call-arg]

# -- configure_queues ----------------------------------------------------------------------------

queues: QueueDeclaration = {
    "fast": {"tasks": ["shop.emails.*"], "default": True},
    "slow": {"tasks": ["reports.*"], "slow": True, "prefetch_multiplier": 1},
    "bounded": {"tasks": ["payments.*"], "soft_time_limit": 30, "time_limit": 60},
}
assert_type(configure_queues(app), dict[str, QueueSpec])
assert_type(configure_queues(app, queues), dict[str, QueueSpec])
typo: QueueDeclaration = {"slow": {"tasks": ["reports.*"], "slowness": True}}  # type: ignore[typeddict-unknown-key]
configure_queues(app, {"slow": {"time_limit": "60s"}})  # type: ignore[typeddict-item]
configure_queues("app")  # type: ignore[arg-type]

# -- replay ----------------------------------------------------------------------------------------

result = replay(42, queue="retry", app=app)
assert_type(result, ReplayResult)
assert_type(result.ok, bool)
assert_type(result.outcome, Outcome)
replay("42")  # type: ignore[arg-type]
replay(42, "retry")  # type: ignore[call-arg]

# -- signal payloads -------------------------------------------------------------------------------


@receiver(task_dead_lettered)
def page_on_call(
    sender: HygieneTask[..., Any], signal: Signal, **payload: Unpack[TaskDeadLetteredPayload]
) -> None:
    assert_type(payload["dead_letter"], DeadLetter)
    assert_type(payload["exception"], BaseException)
    payload["attempts"]  # type: ignore[typeddict-item]


@receiver(task_over_duration)
def note_slow_run(sender: Any, **payload: Unpack[TaskOverDurationPayload]) -> None:
    assert_type(payload["elapsed"], float)
    assert_type(payload["worker"], str)
