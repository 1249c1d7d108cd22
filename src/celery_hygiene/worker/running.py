"""The one scan of the requests this worker's pool is running, shared by the main-process steps.

The worker's main process already tracks every request its pool runs and when it started
(``celery.worker.state.active_requests``). The duration watchdog (``watchdog``) and the lease
keeper (``leases``) both read it, each on its own tick and thread; this is the only place that
touches Celery's set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from celery.worker import state


def active_requests() -> list[Any]:
    """The requests this worker's pool is running now (a copy, safe from any thread)."""
    # The threads pool adds to the WeakSet from other threads; a copy can then fail mid-way.
    for _ in range(5):
        try:
            return list(state.active_requests)
        except RuntimeError:
            continue
    return []


def started_requests() -> Iterator[Any]:
    """The running requests that have started (``time_start`` set): what both steps watch."""
    for request in active_requests():
        if request.time_start is not None:
            yield request
