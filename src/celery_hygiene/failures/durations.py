"""Parse the operator's time input: ``30d`` / ``2h`` / ``15m`` durations and ``--since`` values.

Kept strict on purpose: a typo in ``purge --older-than`` must fail loudly, never default to
"everything".
"""

from __future__ import annotations

import datetime as dt
import re

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)


class DurationError(ValueError):
    """The text is neither a duration like ``2h`` nor a date like ``2024-05-01``."""


def parse_duration(text: str) -> dt.timedelta:
    """``"30d"`` -> 30 days. Units: s, m, h, d, w. A bare number is refused (ambiguous unit)."""
    match = _DURATION.match(text or "")
    if match is None:
        raise DurationError(
            f"malformed duration {text!r}: use a whole number and a unit, "
            "e.g. 45s, 15m, 2h, 30d, 2w"
        )
    amount, unit = int(match.group(1)), match.group(2).lower()
    if amount <= 0:
        raise DurationError(f"duration {text!r} must be greater than zero")
    return dt.timedelta(seconds=amount * _UNITS[unit])


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """A point in time from a duration ago (``2h``) or a date/datetime (naive = current zone)."""
    now = now or timezone.now()
    if _DURATION.match(text or ""):
        return now - parse_duration(text)
    try:
        moment = parse_datetime(text)
        if moment is None:
            day = parse_date(text)
            moment = dt.datetime.combine(day, dt.time.min) if day is not None else None
    except ValueError:  # well-formed but impossible, e.g. 2024-02-31
        moment = None
    if moment is None:
        raise DurationError(
            f"malformed time {text!r}: use a duration ago (2h, 7d) or a date "
            "(2024-05-01, 2024-05-01T13:30, 2024-05-01T13:30+02:00)"
        )
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def duration_option(text: str, option: str) -> dt.timedelta:
    """``parse_duration`` for a management command option: bad input is a CommandError naming it."""
    from django.core.management.base import CommandError

    try:
        return parse_duration(text)
    except DurationError as exc:
        raise CommandError(f"{option}: {exc}") from None
