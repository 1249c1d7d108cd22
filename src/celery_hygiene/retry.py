"""A public path, kept: the module now lives in ``celery_hygiene.failures.retry``."""

from celery_hygiene.failures.retry import (
    ABSOLUTE_MAX_ATTEMPTS,
    ABSOLUTE_MAX_DELAY,
    CELERY_DEFAULT_RETRY_DELAY,
    CELERY_MAX_RETRIES,
    CELERY_RETRY_BACKOFF_MAX,
    CELERY_RETRY_OPTIONS,
    CELERY_TASK_RETRY_ATTRIBUTES,
    DEFAULT_POLICY,
    CeleryRetries,
    Decision,
    RetryPolicy,
    celery_retries,
    coerce_policy,
    policy_from_celery_options,
    wait_celery_backoff,
    wait_exponential_capped,
)

__all__ = [
    "ABSOLUTE_MAX_ATTEMPTS",
    "ABSOLUTE_MAX_DELAY",
    "CELERY_DEFAULT_RETRY_DELAY",
    "CELERY_MAX_RETRIES",
    "CELERY_RETRY_BACKOFF_MAX",
    "CELERY_RETRY_OPTIONS",
    "CELERY_TASK_RETRY_ATTRIBUTES",
    "CeleryRetries",
    "DEFAULT_POLICY",
    "Decision",
    "RetryPolicy",
    "celery_retries",
    "coerce_policy",
    "policy_from_celery_options",
    "wait_celery_backoff",
    "wait_exponential_capped",
]
