"""What happened when in a run: kills, PostgreSQL restarts, broker cuts, worker starts and every
published message, in wall-clock seconds (the clock of the workers' effect stamps and logs)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

# Seconds since the run's start (timeline.t0), rounded to the millisecond; None stays None.
RelativeTime = Callable[[float | None], float | None]


@dataclass
class Timeline:
    """Filled in by the pool, the fault phase and the publisher; read by the report."""

    t0: float = 0.0
    kills: list[dict] = field(default_factory=list)
    pg_restarts: list[dict] = field(default_factory=list)
    broker_cuts: list[dict] = field(default_factory=list)
    worker_starts: list[dict] = field(default_factory=list)
    publish_errors: int = 0
    published: int = 0
    sent: dict[tuple[str, str], list[dict]] = field(default_factory=lambda: defaultdict(list))
    order: list[str] = field(default_factory=list)  # task ids in publish order
    in_broker: set[str] | None = None  # ids still in the broker at the end (Redis only)
    notes: list[str] = field(default_factory=list)


def epoch(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None
