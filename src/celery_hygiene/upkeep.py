"""The worker's main-process upkeep thread: lease heartbeats, the outbox sweep, and (on a Redis
broker) the restore scan for killed workers' messages.

One daemon thread per worker (not per task), started when the worker is ready. It is a thread
rather than an entry on the consumer's timer because its work touches the database: during an
outage a connection attempt may block for seconds, and the event loop that acknowledges
messages must not wait for it. Its database connection is its own (Django's are per thread).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from . import conf, outbox, redis_recovery
from .dbretry import close_broken_connections
from .events import log_event
from .leases import LeaseKeeper

TICK_SECONDS = 1.0


class Upkeep(threading.Thread):
    def __init__(self, app: Any, hostname: str) -> None:
        super().__init__(name="celery-hygiene-upkeep", daemon=True)
        self.app = app
        self.hostname = hostname
        self.leases = LeaseKeeper(hostname)
        self.stopped = threading.Event()
        self.next_sweep = 0.0
        self.next_restore = 0.0
        self.restores = redis_recovery.uses_redis(app)

    def run(self) -> None:
        while not self.stopped.wait(TICK_SECONDS):
            self.tick()

    def tick(self) -> None:
        try:
            self.leases.tick()
        except Exception as exc:  # noqa: BLE001 - never let the thread die
            log_event(logging.ERROR, "lease_tick_failed", worker=self.hostname, error=repr(exc))
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + float(conf.get("OUTBOX_SWEEP_SECONDS"))
            self._sweep()
        if self.restores and now >= self.next_restore:
            self.next_restore = now + float(conf.get("REDIS_RESTORE_SECONDS"))
            self._restore()

    def _sweep(self) -> None:
        try:
            outbox.resend_due(self.app)
        except Exception as exc:  # noqa: BLE001 - database away: next sweep
            close_broken_connections()
            log_event(logging.WARNING, "outbox_sweep_failed", worker=self.hostname, error=repr(exc))

    def _restore(self) -> None:
        try:
            redis_recovery.restore_visible(self.app)
        except Exception as exc:  # noqa: BLE001 - broker away: next time
            log_event(
                logging.WARNING, "redis_restore_failed", worker=self.hostname, error=repr(exc)
            )


_upkeep: Upkeep | None = None


def hostname() -> str | None:
    """The node name of the worker this process is the main process of (None elsewhere)."""
    return _upkeep.hostname if _upkeep is not None else None


def start(consumer: Any) -> Upkeep:
    global _upkeep
    stop()
    _upkeep = Upkeep(consumer.app, consumer.hostname)
    _upkeep.start()
    log_event(logging.INFO, "upkeep_started", worker=consumer.hostname)
    return _upkeep


def stop() -> None:
    global _upkeep
    if _upkeep is not None:
        _upkeep.stopped.set()
        _upkeep = None
