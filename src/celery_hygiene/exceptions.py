"""Errors raised by celery_hygiene. Each message names the task and says what to do."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class HygieneError(Exception):
    """Base class for runtime errors from celery_hygiene."""


class HygieneConfigurationError(ImproperlyConfigured):
    """A task or policy was declared in a way that cannot work; raised at import time."""


class EntityKeyError(HygieneError):
    """The entity key could not be computed for a message (the body does not run)."""


class IdempotencyConflict(HygieneError):
    """Same (entity, operation) arrived with different arguments and on_mismatch="raise"."""


class ResultNotStorable(HygieneError):
    """The body returned a value that cannot be serialized into the claim."""


class ClaimBusy(HygieneError):
    """In eager mode a claim held by someone else cannot be waited for."""


class NotFinished(HygieneError):
    """Raise from an idempotent or singleton body to end *without* recording success.

    The claim is released as if this run never happened (in atomic mode the body's own writes
    still commit), the task ends normally (no retry, no dead letter), and the next message for
    the key runs the body. For "nothing to do yet": a batch that is not complete, an upstream
    that has not published its data.
    """


class PayloadTooLarge(HygieneError, ValueError):
    """``delay_on_commit``: the arguments are over ``PAYLOAD_MAX_BYTES``; nothing was enqueued."""
