"""Mask secrets in payloads before a human sees them (CLI output, admin pages, ERROR logs).

Only what is *shown* is redacted: the stored dead letter keeps the real values, because a replay
must send exactly what the task was first sent.

A payload can also be *text*: stored truncated, escaped or as a ``repr()`` (a dead letter whose
payload could not be kept as JSON), or a string argument that holds JSON. In text, a sensitive
key followed by ``:`` or ``=`` has its value masked (``"password": "..."``, ``'token': '...'``,
``api_key=...``), even when the text is cut off in the middle of the value.

Keys and patterns are compared normalized: lower-cased, with ``-``, ``_``, ``.`` and spaces
removed, so the pattern ``apikey`` catches ``api_key``, ``X-Api-Key``, ``APIKEY`` and
``x.api.key`` alike, and ``privatekey`` catches ``private_key`` and ``Private-Key``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from celery_hygiene import conf

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


def redact_text(text: str, patterns: Iterable[str] | None = None) -> str:
    """``text`` with the value after every sensitive ``key:`` / ``key=`` replaced by ``MASK``."""
    keys = tuple(patterns) if patterns is not None else redact_keys()
    if not keys:
        return text
    return _scrub(text, keys)


def _walk(value: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {
            key: MASK if is_sensitive(key, keys) else _walk(item, keys)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_walk(item, keys) for item in value]
    if isinstance(value, str):
        return _scrub(value, keys)
    return value


# In text: a key (quoted with " or ', the quote possibly backslash-escaped as in JSON inside
# JSON, or bare), then ':' or '=', then its value: a quoted string, possibly cut off by
# truncation (no closing quote), or a bare token (a number, an unquoted value).
_KEY_VALUE = re.compile(
    r"""(?P<key>(?P<kq>\\?["'])(?P<quoted>[^"'\\]{1,100})(?P=kq)|(?P<bare>[A-Za-z_][\w.\-]{0,99}))"""
    r"""(?P<sep>\s*[:=]\s*)"""
    r"""(?P<value>(?P<vq>\\")(?:[^\\]|\\(?!"))*?(?:\\"|$)"""
    r"""|(?P<dq>")(?:[^"\\]|\\.)*(?:"|$)"""
    r"""|(?P<sq>')(?:[^'\\]|\\.)*(?:'|$)"""
    r"""|[^\s,;&}\]]+)"""
)


def _scrub(text: str, keys: tuple[str, ...]) -> str:
    if ":" not in text and "=" not in text:
        return text

    def mask(match: re.Match[str]) -> str:
        if not is_sensitive(match.group("quoted") or match.group("bare"), keys):
            # The value may hold text of its own (JSON inside a JSON string).
            return f"{match.group('key')}{match.group('sep')}{_scrub(match.group('value'), keys)}"
        quote = match.group("vq") or match.group("dq") or match.group("sq") or ""
        return f"{match.group('key')}{match.group('sep')}{quote}{MASK}{quote}"

    return _KEY_VALUE.sub(mask, text)
