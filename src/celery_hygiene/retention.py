"""A public path, kept: the module now lives in ``celery_hygiene.failures.retention``."""

from celery_hygiene.failures.retention import (
    DEFAULT_BATCH_SIZE,
    PURGEABLE_STATUSES,
    purge_claims,
    purge_dead_letters,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "PURGEABLE_STATUSES",
    "purge_claims",
    "purge_dead_letters",
]
