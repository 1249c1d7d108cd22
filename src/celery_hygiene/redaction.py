"""Mask secrets in payloads before a human sees them (CLI output, admin pages).

Only what is *shown* is redacted: the stored dead letter keeps the real values, because a replay
must send exactly what the task was first sent.

Keys and patterns are compared normalized: lower-cased, with ``-``, ``_``, ``.`` and spaces
removed, so the pattern ``apikey`` catches ``api_key``, ``X-Api-Key``, ``APIKEY`` and
``x.api.key`` alike, and ``privatekey`` catches ``private_key`` and ``Private-Key``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from . import conf

MASK = "********"

# What ``CELERY_HYGIENE["REDACT_KEYS"]`` means when not set. Substrings of the normalized key.
DEFAULT_PATTERNS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "authkey",
    "credential",
    "privatekey",
    "cookie",
    "session",
    "signature",
    "dsn",
)
_SEPARATORS = re.compile(r"[-_.\s]+")


def normalize(key: object) -> str:
    return _SEPARATORS.sub("", str(key).lower())


def redact_keys() -> tuple[str, ...]:
    """The configured key patterns, normalized (``CELERY_HYGIENE["REDACT_KEYS"]``).

    Not set: :data:`DEFAULT_PATTERNS`. A list replaces them; to extend them, write
    ``[*DEFAULT_PATTERNS, "iban"]``. ``[]`` turns redaction off.
    """
    configured = conf.get("REDACT_KEYS")
    if configured is None:
        configured = DEFAULT_PATTERNS
    return tuple(p for p in (normalize(pattern) for pattern in configured) if p)


def is_sensitive(key: object, patterns: Iterable[str]) -> bool:
    """Normalized substring match: ``DB_PASSWORD``, ``X-Api-Key``, ``Set-Cookie`` are caught."""
    normalized = normalize(key)
    return any(pattern and normalize(pattern) in normalized for pattern in patterns)


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
