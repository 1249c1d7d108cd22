"""Retry policy: attempt number + exception + elapsed time -> "retry in N seconds" or "give up".

Pure: no Celery, no database. It speaks tenacity's vocabulary (wait strategies, stop conditions)
so a team reuses what it already knows, but it never sleeps: tenacity's waits are functions of a
``RetryCallState`` and are evaluated here to compute a countdown for Celery's own retry.

The policy itself is in ``retry_policy``; this module adds Celery's own retry options (a policy
from ``autoretry_for``/``retry_backoff``, and what a task without a hygiene policy does) and keeps
every name's old path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tenacity import (
    stop_after_attempt,
    stop_after_delay,
    wait_chain,
    wait_exponential,
    wait_fixed,
    wait_incrementing,
    wait_random,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from celery_hygiene.exceptions import HygieneConfigurationError
from celery_hygiene.failures.retry_policy import (
    ABSOLUTE_MAX_ATTEMPTS,
    ABSOLUTE_MAX_DELAY,
    DEFAULT_POLICY,
    Decision,
    RetryPolicy,
    coerce_policy,
    wait_celery_backoff,
    wait_exponential_capped,
)

__all__ = [
    "ABSOLUTE_MAX_ATTEMPTS",
    "ABSOLUTE_MAX_DELAY",
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

CELERY_TASK_RETRY_ATTRIBUTES = CELERY_RETRY_OPTIONS
"""The same names read as a task's attributes: how Celery retries it (``celery/app/autoretry.py``,
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
