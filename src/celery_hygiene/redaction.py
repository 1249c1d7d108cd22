"""Mask secrets in payloads before a human sees them (CLI output, admin pages).

Only what is *shown* is redacted: the stored dead letter keeps the real values, because a replay
must send exactly what the task was first sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import conf

MASK = "********"


def redact_keys() -> tuple[str, ...]:
    """The configured key patterns, lower-cased (``CELERY_HYGIENE["REDACT_KEYS"]``)."""
    return tuple(str(pattern).lower() for pattern in conf.get("REDACT_KEYS") or ())


def is_sensitive(key: object, patterns: Iterable[str]) -> bool:
    """Case-insensitive substring match, so ``DB_PASSWORD`` and ``x-api-key`` are caught too."""
    lowered = str(key).lower()
    return any(pattern and pattern in lowered for pattern in patterns)


def redact(value: Any, patterns: Iterable[str] | None = None) -> Any:
    """A copy of ``value`` with every dict entry under a sensitive key replaced by ``MASK``.

    Walks nested dicts, lists and tuples; other values are returned unchanged (not copied).
    """
    keys = tuple(patterns) if patterns is not None else redact_keys()
    if not keys:
        return value
    return _walk(value, keys)


def _walk(value: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {
            key: MASK if is_sensitive(key, keys) else _walk(item, keys)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_walk(item, keys) for item in value]
    return value
