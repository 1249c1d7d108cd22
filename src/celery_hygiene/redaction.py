"""A public path, kept: the module now lives in ``celery_hygiene.failures.redaction``."""

from celery_hygiene.failures.redaction import (
    DEFAULT_PATTERNS,
    MASK,
    is_sensitive,
    normalize,
    redact,
    redact_keys,
    redact_text,
)

__all__ = [
    "DEFAULT_PATTERNS",
    "MASK",
    "is_sensitive",
    "normalize",
    "redact",
    "redact_keys",
    "redact_text",
]
