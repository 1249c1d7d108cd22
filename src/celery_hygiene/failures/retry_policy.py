"""The retry policy itself: attempt number + exception + elapsed time -> "retry in N seconds"
or "give up" (:class:`RetryPolicy`), and the waits the library adds to tenacity's.

Pure: no Celery, no database. It speaks tenacity's vocabulary (wait strategies, stop conditions)
so a team reuses what it already knows, but it never sleeps: tenacity's waits are functions of a
``RetryCallState`` and are evaluated here to compute a countdown for Celery's own retry.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    RetryCallState,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from celery_hygiene.exceptions import HygieneConfigurationError

# Why a ceiling on the ceiling: a countdown longer than a day is almost always a unit mistake
# (milliseconds for seconds), and RabbitMQ/Redis hold ETA messages in worker memory meanwhile.
ABSOLUTE_MAX_DELAY = 7 * 24 * 3600.0
ABSOLUTE_MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class Decision:
    retry: bool
    countdown: float = 0.0
    # Why we give up, as a DeadLetterReason value: "exhausted", "gave_up" or "deadline".
    reason: str = ""


class wait_exponential_capped(wait_base):  # noqa: N801 - tenacity's naming, like wait_fixed
    """``multiplier * 2 ** (attempt - 1)`` plus up to ``jitter`` random seconds, capped at ``max``.

    The default policy's wait. It is what tenacity 9.2 calls ``wait_exponential_jitter(multiplier=
    2, max=300)``, written out here because that keyword does not exist before tenacity 9.2 (it was
    ``initial=``, which 9.2 deprecates): the package supports tenacity from 9.0 on.
    """

    def __init__(self, multiplier: float = 1.0, max: float = 300.0, jitter: float = 1.0) -> None:
        self.multiplier = float(multiplier)
        self.max = float(max)
        self.jitter = float(jitter)

    def __call__(self, retry_state: RetryCallState) -> float:
        try:
            raw = self.multiplier * math.pow(2, retry_state.attempt_number - 1)
        except OverflowError:
            return self.max
        return max(0.0, min(self.max, raw + random.uniform(0, self.jitter)))

    def __repr__(self) -> str:
        return (
            f"wait_exponential_capped(multiplier={self.multiplier:g}, max={self.max:g}, "
            f"jitter={self.jitter:g})"
        )


class wait_celery_backoff(wait_base):  # noqa: N801 - tenacity's naming
    """Celery's autoretry backoff (``retry_backoff``/``retry_backoff_max``/``retry_jitter``).

    The same arithmetic as ``celery.utils.time.get_exponential_backoff_interval``, with Celery's
    ``task.request.retries`` being ``attempt - 1``: ``min(maximum, factor * 2 ** retries)`` whole
    seconds, then, with full jitter, a random whole number of seconds from 0 to that value.
    """

    def __init__(self, factor: int = 1, maximum: int = 600, full_jitter: bool = True) -> None:
        self.factor = int(factor)
        self.maximum = int(maximum)
        self.full_jitter = bool(full_jitter)

    def __call__(self, retry_state: RetryCallState) -> float:
        retries = max(0, retry_state.attempt_number - 1)
        countdown = self.maximum if retries > 64 else min(self.maximum, self.factor * 2**retries)
        if self.full_jitter:
            countdown = random.randrange(countdown + 1)
        return float(max(0, countdown))

    def __repr__(self) -> str:
        return (
            f"wait_celery_backoff(factor={self.factor}, maximum={self.maximum}, "
            f"full_jitter={self.full_jitter})"
        )


def _default_wait() -> wait_base:
    return wait_exponential_capped(multiplier=2, max=300)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how far apart a failing task is retried before it is dead-lettered.

    ``max_attempts`` counts runs of the body (the first one included), across Celery retries,
    broker redeliveries and worker restarts. ``max_delay`` clamps every countdown and
    ``min_delay`` floors it, so full jitter never makes a retry immediate by accident.
    ``max_elapsed`` bounds the time from the first attempt to the last scheduled retry.
    """

    max_attempts: int
    wait: wait_base = field(default_factory=_default_wait)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()
    stop: stop_base | None = None
    max_delay: float = 3600.0
    min_delay: float = 1.0
    max_elapsed: float | None = 24 * 3600.0

    def __post_init__(self) -> None:
        self._validate_attempts()
        self._validate_delays()
        for name in ("retry_on", "give_up_on"):
            value = getattr(self, name)
            if isinstance(value, type):  # a single class is a common slip; accept it
                object.__setattr__(self, name, (value,))
            elif not all(isinstance(c, type) and issubclass(c, BaseException) for c in value):
                raise HygieneConfigurationError(
                    f"RetryPolicy.{name} must be a tuple of exception classes, got {value!r}."
                )
        if not callable(self.wait):
            raise HygieneConfigurationError(
                f"RetryPolicy.wait must be a tenacity wait strategy, got {self.wait!r}."
            )

    def _validate_attempts(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise HygieneConfigurationError(
                f"RetryPolicy.max_attempts must be a whole number (a hard cap), got {attempts!r}. "
                "Retrying forever is a bug: pick a cap and let the dead-letter store keep the rest."
            )
        if not 1 <= attempts <= ABSOLUTE_MAX_ATTEMPTS:
            raise HygieneConfigurationError(
                f"RetryPolicy.max_attempts must be between 1 and {ABSOLUTE_MAX_ATTEMPTS}, "
                f"got {attempts}."
            )

    def _validate_delays(self) -> None:
        for name in ("max_delay", "min_delay"):
            value = getattr(self, name)
            if value is None or not math.isfinite(value) or value < 0:
                raise HygieneConfigurationError(
                    f"RetryPolicy.{name} must be a finite number of seconds, got {value!r}: "
                    "an unbounded delay is a retry that never comes."
                )
        if not 0 < self.max_delay <= ABSOLUTE_MAX_DELAY:
            raise HygieneConfigurationError(
                f"RetryPolicy.max_delay must be in (0, {ABSOLUTE_MAX_DELAY:.0f}] seconds, "
                f"got {self.max_delay}."
            )
        if self.min_delay > self.max_delay:
            raise HygieneConfigurationError(
                f"RetryPolicy.min_delay ({self.min_delay}) is above max_delay ({self.max_delay})."
            )
        if self.max_elapsed is not None and not (
            math.isfinite(self.max_elapsed) and self.max_elapsed > 0
        ):
            raise HygieneConfigurationError(
                f"RetryPolicy.max_elapsed must be a positive number of seconds or None, "
                f"got {self.max_elapsed!r}."
            )

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.give_up_on)

    def countdown(self, attempt: int, elapsed: float = 0.0) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), clamped."""
        raw = float(self.wait(_call_state(attempt, elapsed)))
        if not math.isfinite(raw):
            raw = self.max_delay
        return min(self.max_delay, max(self.min_delay, raw))

    def decide(self, *, attempt: int, exc: BaseException, elapsed: float = 0.0) -> Decision:
        """What to do after attempt number ``attempt`` failed with ``exc``."""
        if not self.is_retryable(exc):
            return Decision(retry=False, reason="gave_up")
        if attempt >= self.max_attempts:
            return Decision(retry=False, reason="exhausted")
        if self.stop is not None and self.stop(_call_state(attempt, elapsed)):
            return Decision(retry=False, reason="exhausted")
        countdown = self.countdown(attempt, elapsed)
        if self.max_elapsed is not None and elapsed + countdown > self.max_elapsed:
            return Decision(retry=False, reason="deadline")
        return Decision(retry=True, countdown=countdown)

    def longest_countdown(self) -> float:
        """Upper bound of any countdown this policy can produce (for broker timeout checks)."""
        return self.max_delay


def _call_state(attempt: int, elapsed: float) -> RetryCallState:
    # A RetryCallState without a Retrying object is enough for waits and stops: they read only
    # the attempt number and the time since start.
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.start_time = 0.0
    state.outcome_timestamp = elapsed
    return state


def coerce_policy(value: Any) -> RetryPolicy:
    """Accept a RetryPolicy, or a dict of its arguments (handy in Django settings)."""
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, dict):
        return RetryPolicy(**value)
    raise HygieneConfigurationError(
        f"Expected a celery_hygiene.RetryPolicy or a dict of its arguments, got {value!r}."
    )


DEFAULT_POLICY = RetryPolicy(max_attempts=5)
