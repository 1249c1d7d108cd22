"""Lease heartbeats: the worker's main process keeps the claims of running bodies alive.

A lease that only ends when its owner says so would never free a crashed worker's claim; a lease
that is never renewed lets a slow but live body be taken over and run twice. So leases are short
(``DEFAULT_LEASE_SECONDS``, a minute) and renewed from outside the task: the main process already
knows every request its pool is running (``celery.worker.state.active_requests``), computes each
one's claim key once, and renews all claims that are due in one statement. A body that runs for
an hour keeps its claim; a worker that dies stops renewing and its claims lapse within one lease.

Renewal runs in a thread of the main process, never in the event loop (a database outage must
not stall message handling) and never in the pool processes (a body stuck in C code cannot
stop its own heartbeat, nor fake one). Atomic claims are not renewed: their row is uncommitted
until the body ends, and the open transaction itself is the lease (it dies with its process).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections

from . import claims
from .dbretry import close_broken_connections
from .events import log_event
from .watchdog import active_requests

# Renew when a third of the lease is left to run: two missed heartbeats (a database blip) still
# leave the claim with its owner.
RENEW_FRACTION = 1 / 3


@dataclass
class _Tracked:
    held: claims.Held
    renewed_at: float  # epoch seconds of the last renewal (or of the start of the run)


class LeaseKeeper:
    """Renews the claims of this worker's running requests; one instance per worker."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.tracked: dict[str, _Tracked | None] = {}  # task id -> claim (None: no claim to keep)

    def tick(self, now: float | None = None) -> int:
        """Renew whatever is due; returns the number of claims renewed."""
        now = time.time() if now is None else now
        running: set[str] = set()
        for request in active_requests():
            if request.time_start is None:
                continue
            running.add(request.id)
            if request.id not in self.tracked:
                self.tracked[request.id] = self._claim_of(request)
        for task_id in list(self.tracked):
            if task_id not in running:
                del self.tracked[task_id]
        due = [
            tracked
            for tracked in self.tracked.values()
            if tracked is not None
            and now - tracked.renewed_at >= tracked.held.lease_seconds * RENEW_FRACTION
        ]
        if not due:
            return 0
        return self._renew(due, now)

    def _renew(self, due: list[_Tracked], now: float) -> int:
        close_old_connections()
        try:
            renewed = claims.renew([t.held for t in due], worker=self.hostname)
        except Exception as exc:  # noqa: BLE001 - retried on the next tick, a second later
            close_broken_connections()
            log_event(
                logging.WARNING,
                "lease_renew_failed",
                worker=self.hostname,
                claims=len(due),
                error=repr(exc),
            )
            return 0
        for tracked in due:
            tracked.renewed_at = now
        return renewed

    def _claim_of(self, request: Any) -> _Tracked | None:
        task = request.task
        spec = getattr(task, "hygiene_idempotency", None)
        if spec is None or spec.atomic or not hasattr(task, "claim_key_or_none"):
            return None
        key = task.claim_key_or_none(request.args or (), request.kwargs or {})
        if key is None:
            return None
        held = claims.Held(
            entity=key.entity,
            operation=key.operation,
            owner_task_id=request.id,
            lease_seconds=task.hygiene_lease_seconds(),
        )
        return _Tracked(held, renewed_at=float(request.time_start))
