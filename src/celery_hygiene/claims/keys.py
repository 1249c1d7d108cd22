"""Claim keys and argument fingerprints: pure functions, no Django or Celery state."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
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
    if (
        len(value) <= MAX_KEY_LENGTH
        and "\x00" not in value
        and _HASH_MARK not in value
        and _encodable(value)
    ):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    readable = value[:READABLE_PREFIX].replace("\x00", "")
    readable = readable.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> "?"
    return f"{readable}{_HASH_MARK}{digest}"


def _encodable(value: str) -> bool:
    """PostgreSQL text holds UTF-8 only: a lone surrogate (from JSON "\\ud800") cannot be stored."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fingerprint(arguments: dict[str, Any]) -> str:
    """sha256 of the arguments in a canonical form.

    Equal arguments give equal fingerprints in every process: key order and call style do not
    matter, ``1``, ``1.0`` and ``Decimal("1.00")`` are one number, a set hashes the same
    whatever its iteration order (which changes with each process's hash seed), dicts with
    keys of mixed types are fine, and a tuple equals the list it becomes on the wire.
    """
    canonical = json.dumps(_canonical(arguments), separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _canonical(value: Any) -> Any:
    """A JSON value that is equal for equal arguments; scalars are tagged with their kind."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float | decimal.Decimal):
        return ["n", _number(value)]
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        pairs = [[_canonical(k), _canonical(v)] for k, v in value.items()]
        return ["d", sorted(pairs, key=_sort_key)]
    if isinstance(value, list | tuple):
        return ["l", [_canonical(item) for item in value]]
    if isinstance(value, set | frozenset):
        return ["s", sorted((_canonical(item) for item in value), key=_sort_key)]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return ["t", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["u", str(value)]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["b", bytes(value).hex()]
    return ["r", f"{type(value).__module__}.{type(value).__qualname__}", repr(value)]


def _number(value: int | float | decimal.Decimal) -> str:
    if isinstance(value, int):
        return str(value)
    number = decimal.Decimal(repr(value)) if isinstance(value, float) else value
    if not number.is_finite():
        return str(number)  # NaN, Infinity
    if number == number.to_integral_value():
        return str(int(number))
    return str(number.normalize())


def _sort_key(item: Any) -> str:
    return json.dumps(item, separators=(",", ":"))
