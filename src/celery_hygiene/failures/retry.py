"""Retry policy: attempt number + exception + elapsed time -> "retry in N seconds" or "give up".

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
    stop_after_attempt,
    stop_after_delay,
    wait_chain,
    wait_exponential,
    wait_fixed,
    wait_incrementing,
    wait_random,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from celery_hygiene.exceptions import HygieneConfigurationError

__all__ = [
    "DEFAULT_POLICY",
    "Decision",
    "RetryPolicy",
    "coerce_policy",
    "policy_from_celery_options",
    "celery_retries",
    "CeleryRetries",
    "wait_celery_backoff",
    "wait_exponential_capped",
    # tenacity's waits and stops that behave the same on every supported tenacity (>= 9.0),
    # re-exported so a project that installs only celery-hygiene writes its policies without
    # importing (and having to declare) tenacity itself.
    "stop_after_attempt",
    "stop_after_delay",
    "wait_chain",
    "wait_exponential",
    "wait_fixed",
    "wait_incrementing",
    "wait_random",
    "wait_random_exponential",
]

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


# -- Celery's own retry options ----------------------------------------------------------------

CELERY_RETRY_OPTIONS = (
    "autoretry_for",
    "dont_autoretry_for",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "max_retries",
    "default_retry_delay",
    "retry_kwargs",
)
"""Task options of ``@app.task`` that ``policy_from_celery_options`` translates."""

# Celery's own defaults (celery.app.task.Task and celery/app/autoretry.py).
CELERY_MAX_RETRIES = 3
CELERY_DEFAULT_RETRY_DELAY = 180
CELERY_RETRY_BACKOFF_MAX = 600


def policy_from_celery_options(options: dict[str, Any], *, where: str = "task") -> RetryPolicy:
    """The RetryPolicy that behaves like Celery's autoretry with these ``@app.task`` options.

    - ``max_retries=N`` -> ``max_attempts=N + 1`` (Celery's default 3 -> 4); ``None`` is refused.
    - ``autoretry_for`` -> ``retry_on``; without it, ``RetryPolicy``'s default (every
      ``Exception``), as for any hygiene task: bounded retries, then a dead letter.
    - ``dont_autoretry_for`` -> ``give_up_on``.
    - ``retry_backoff=True|n`` -> ``wait_celery_backoff(factor=n, maximum=retry_backoff_max
      (600), full_jitter=retry_jitter (True))``; otherwise a fixed wait of
      ``retry_kwargs["countdown"]`` or ``default_retry_delay`` (180).
    - no floor (``min_delay=0``) and no deadline (``max_elapsed=None``): Celery has neither.
    """
    unknown = sorted(set(options) - set(CELERY_RETRY_OPTIONS))
    if unknown:
        raise HygieneConfigurationError(f"{where}: not Celery retry options: {unknown}.")
    retry_kwargs = dict(options.get("retry_kwargs") or {})
    unsupported = sorted(set(retry_kwargs) - {"max_retries", "countdown"})
    if unsupported:
        raise HygieneConfigurationError(
            f"{where}: retry_kwargs {unsupported} cannot be translated into a RetryPolicy; "
            "only 'max_retries' and 'countdown' can. Route or delay retries another way."
        )
    max_retries = retry_kwargs.get("max_retries", options.get("max_retries", CELERY_MAX_RETRIES))
    if max_retries is None or isinstance(max_retries, bool) or not isinstance(max_retries, int):
        raise HygieneConfigurationError(
            f"{where}: max_retries={max_retries!r}: hygiene tasks need a whole number of retries "
            "(a hard cap). Retrying forever is a bug: pick a cap and let the dead-letter store "
            "keep the rest."
        )
    backoff = options.get("retry_backoff", False)
    wait: wait_base
    if backoff:
        maximum = int(options.get("retry_backoff_max", CELERY_RETRY_BACKOFF_MAX))
        wait = wait_celery_backoff(
            factor=int(max(1.0, float(backoff))),
            maximum=maximum,
            full_jitter=bool(options.get("retry_jitter", True)),
        )
        ceiling = float(maximum)
    else:
        delay = retry_kwargs.get(
            "countdown", options.get("default_retry_delay", CELERY_DEFAULT_RETRY_DELAY)
        )
        if delay is None or isinstance(delay, bool) or not isinstance(delay, int | float):
            raise HygieneConfigurationError(
                f"{where}: default_retry_delay must be a number of seconds, got {delay!r}."
            )
        wait = wait_fixed(delay)
        ceiling = float(delay)
    return RetryPolicy(
        max_attempts=max_retries + 1,
        wait=wait,
        retry_on=_exception_classes(
            options.get("autoretry_for", (Exception,)), where, "autoretry_for"
        ),
        give_up_on=_exception_classes(
            options.get("dont_autoretry_for", ()), where, "dont_autoretry_for"
        ),
        min_delay=0.0,
        # The wait caps itself; this only keeps the policy's own bound above it.
        max_delay=min(ABSOLUTE_MAX_DELAY, max(1.0, ceiling)),
        max_elapsed=None,
    )


def _exception_classes(value: Any, where: str, name: str) -> tuple[type[BaseException], ...]:
    classes = (value,) if isinstance(value, type) else tuple(value or ())
    if not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise HygieneConfigurationError(
            f"{where}: {name} must be a tuple of exception classes, got {value!r}."
        )
    return classes


# -- a task that chose no hygiene policy: Celery's own semantics -------------------------------

CELERY_TASK_RETRY_ATTRIBUTES = (
    "autoretry_for",
    "dont_autoretry_for",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "max_retries",
    "default_retry_delay",
    "retry_kwargs",
)
"""Attributes of a Celery task that decide how Celery retries it (``celery/app/autoretry.py``,
``Task.retry``)."""


@dataclass(frozen=True)
class CeleryRetries:
    """How Celery itself retries a task, as a RetryPolicy, and where hygiene cannot follow it.

    ``policy`` retries exactly the exceptions Celery's autoretry retries (none without
    ``autoretry_for``), as often and as far apart. ``retry_cap`` is the ``max_retries`` a body's
    own ``self.retry()`` is held to. ``differences`` says, in words, what hygiene changes.
    """

    policy: RetryPolicy
    retry_cap: int
    differences: tuple[str, ...] = ()


def celery_retries(task: Any, *, forever_attempts: int) -> CeleryRetries:
    """Celery's retry semantics for ``task`` (read from its attributes, at call time).

    - no ``autoretry_for``: ``retry_on=()``, no automatic retry; a failure is final;
    - ``autoretry_for``/``dont_autoretry_for``/``retry_backoff*``/``retry_jitter``/
      ``default_retry_delay``/``retry_kwargs``: the same attempts and countdowns as Celery's
      autoretry (``retry_kwargs["max_retries"]`` over ``max_retries``, the backoff over
      ``retry_kwargs["countdown"]`` over ``default_retry_delay``);
    - ``max_retries=None`` (Celery: forever) is held to ``forever_attempts`` runs; the audit
      (W010) and ``taskhygiene check --tasks`` say so before deploying. Never an import error:
      an existing project must keep starting.
    """
    notes: list[str] = []
    retry_kwargs = dict(getattr(task, "retry_kwargs", None) or {})
    ignored = sorted(set(retry_kwargs) - {"max_retries", "countdown"})
    if ignored:
        notes.append(
            f"retry_kwargs {ignored} are not applied to automatic retries (only max_retries and "
            "countdown are): the retry keeps the message's own options"
        )
    autoretry_for = _lenient_classes(getattr(task, "autoretry_for", ()))
    body_cap = getattr(task, "max_retries", None)
    # As Task.retry(max_retries=None): "use the task's", not "forever".
    max_retries = retry_kwargs.get("max_retries")
    if max_retries is None:
        max_retries = body_cap
    forever = max(0, int(forever_attempts) - 1)
    if max_retries is None or body_cap is None:
        notes.append(
            f"max_retries=None: Celery retries forever; hygiene stops after {forever_attempts} "
            "attempts and keeps a dead letter"
        )
    retries = forever if not isinstance(max_retries, int) else max(0, max_retries)
    backoff = getattr(task, "retry_backoff", False)
    wait: wait_base
    if backoff:
        maximum = int(getattr(task, "retry_backoff_max", CELERY_RETRY_BACKOFF_MAX))
        wait = wait_celery_backoff(
            factor=int(max(1.0, float(backoff))),
            maximum=maximum,
            full_jitter=bool(getattr(task, "retry_jitter", True)),
        )
        ceiling = float(maximum)
    else:
        delay = retry_kwargs.get("countdown", getattr(task, "default_retry_delay", None))
        # Celery retries at once when neither a countdown nor a default delay is set.
        seconds = float(delay) if isinstance(delay, int | float) and delay > 0 else 0.0
        wait = wait_fixed(seconds)
        ceiling = seconds
    policy = RetryPolicy(
        max_attempts=min(ABSOLUTE_MAX_ATTEMPTS, retries + 1),
        wait=wait,
        retry_on=autoretry_for,
        give_up_on=_lenient_classes(getattr(task, "dont_autoretry_for", ())),
        min_delay=0.0,
        max_delay=min(ABSOLUTE_MAX_DELAY, max(1.0, ceiling)),
        max_elapsed=None,
    )
    cap = forever if not isinstance(body_cap, int) else max(0, body_cap)
    return CeleryRetries(policy, min(ABSOLUTE_MAX_ATTEMPTS - 1, cap), tuple(notes))


def _lenient_classes(value: Any) -> tuple[type[BaseException], ...]:
    """Exception classes as Celery reads them (``tuple(...)``); anything else is left out, as
    Celery's ``except`` would fail on it only when an exception is raised."""
    classes = (value,) if isinstance(value, type) else tuple(value or ())
    return tuple(c for c in classes if isinstance(c, type) and issubclass(c, BaseException))
