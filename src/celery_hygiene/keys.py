"""Claim keys and argument fingerprints: pure functions, no Django or Celery state."""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_KEY_LENGTH = 255
# Long keys keep this many readable characters before the hash, so operators can still see
# which business object a row is about.
READABLE_PREFIX = 150
_HASH_MARK = "~sha256:"


def normalize_key(value: str) -> str:
    """Fit any key into the indexed column without losing uniqueness.

    Short, clean keys are stored as they are. Keys that are too long, or contain a NUL byte
    (PostgreSQL text cannot hold one), keep a readable prefix and gain a sha256 of the whole key.
    """
    if len(value) <= MAX_KEY_LENGTH and "\x00" not in value and _HASH_MARK not in value:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    readable = value[:READABLE_PREFIX].replace("\x00", "")
    return f"{readable}{_HASH_MARK}{digest}"


def fingerprint(arguments: dict[str, Any]) -> str:
    """sha256 of the arguments in a canonical form (key order and call style do not matter)."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
