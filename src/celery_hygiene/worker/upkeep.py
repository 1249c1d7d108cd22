"""What the worker's main process runs for the library, started and stopped in one place.

Two threads, each a step with ``start``/``stop``, because what they wait on differs:

- ``leases.LeaseThread``: lease heartbeats (and a watch on the amortized-completion writer).
  Talks to PostgreSQL only, with connect and statement timeouts below a third of a lease, so a
  live owner keeps its claims whatever the broker does.
- ``broker_upkeep.BrokerUpkeep``: the outbox sweep and, on a Redis broker, the restore scan.
  Broker I/O, on a connection of its own with socket timeouts.

They are threads rather than entries on the consumer's timer because their work may block (a
connection attempt during an outage), and the event loop that acknowledges messages must not
wait for it. Each has its own database connection (Django's are per thread). Started when the
worker is ready; stopped by the consumer step (``worker/consumer_step.py``) or at
``worker_shutdown``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from celery_hygiene.events import log_event
from celery_hygiene.task import node
from celery_hygiene.worker.broker_upkeep import BrokerUpkeep
from celery_hygiene.worker.leases import LeaseThread


class Step(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Upkeep:
    def __init__(self, app: Any, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self.leases = LeaseThread(hostname)
        self.broker = BrokerUpkeep(app, hostname)
        self.steps: list[Step] = [self.leases, self.broker]

    def start(self) -> None:
        for step in self.steps:
            step.start()

    def stop(self) -> None:
        for step in reversed(self.steps):
            step.stop()


_upkeep: Upkeep | None = None


def hostname() -> str | None:
    """The node name of the worker this process is the main process of (None elsewhere)."""
    return _upkeep.hostname if _upkeep is not None else None


def start(consumer: Any) -> Upkeep:
    global _upkeep
    stop()
    _upkeep = Upkeep(consumer.app, consumer.hostname)
    node.set_hostname(consumer.hostname)
    _upkeep.start()
    log_event(logging.INFO, "upkeep_started", worker=consumer.hostname)
    return _upkeep


def stop() -> None:
    global _upkeep
    if _upkeep is not None:
        _upkeep.stop()
        _upkeep = None
        node.set_hostname(None)
