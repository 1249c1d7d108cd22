"""The worker's main process as one room: its named steps, started and stopped in one place.

What the main process runs for the library, each a step with ``start``/``stop`` (in the manner of
Celery's bootsteps), started in this order when the worker is ready and stopped in reverse:

- ``runstats`` (:class:`RunStatsStep`): run statistics, flushed when the room stops (last).
- ``watchdog`` (:class:`WatchdogStep`): the duration watchdog, a tick on the consumer's timer (a
  thread of its own on the solo pool).
- ``leases`` (``leases.LeaseThread``): lease heartbeats (and a watch on the amortized-completion
  writer). Talks to PostgreSQL only, with connect and statement timeouts below a third of a
  lease, so a live owner keeps its claims whatever the broker does.
- ``broker`` (``broker_upkeep.BrokerUpkeep``): the outbox sweep and, on a Redis broker, the
  restore scan. Broker I/O, on a connection of its own with socket timeouts.
- ``writer`` (:class:`WriterStep`): the amortized completion writer (``amortized``), whose thread
  exists from before the fork; started here it learns the worker's name, stopped it records what
  is left and sends the acknowledgements that waited for it.

The watchdog and the lease keeper read the same scan of the running requests
(``worker/running.py``). Lease renewal and broker I/O are separate threads because what they wait
on differs, and they are threads rather than entries on the consumer's timer because their work
may block (a connection attempt during an outage), and the event loop that acknowledges messages
must not wait for it. Each has its own database connection (Django's are per thread).

Started at ``worker_ready`` (``worker/hooks.py``); stopped by the consumer step
(``worker/consumer_step.py``, after the pool, warm or cold) or at ``worker_shutdown``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from celery_hygiene.events import log_event
from celery_hygiene.task import node
from celery_hygiene.worker import amortized, runstats, watchdog
from celery_hygiene.worker.broker_upkeep import BrokerUpkeep
from celery_hygiene.worker.leases import LeaseThread


class Step(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class WatchdogStep:
    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer

    def start(self) -> None:
        watchdog.install(self.consumer)

    def stop(self) -> None:
        watchdog.uninstall()


class WriterStep:
    def __init__(self, consumer: Any, hostname: str | None) -> None:
        self.consumer = consumer
        self.hostname = hostname

    def start(self) -> None:
        amortized.start(self.consumer)

    def stop(self) -> None:
        # The pool has stopped: record what it handed over, then send the held acks.
        amortized.stop_and_acknowledge(self.hostname)


class RunStatsStep:
    def start(self) -> None:
        pass  # the recorder starts on its first run

    def stop(self) -> None:
        flush_run_stats()


def flush_run_stats() -> None:
    """Write the run statistics gathered in this process (solo/threads pools ran tasks here;
    a prefork child at its exit); never raises."""
    try:
        runstats.recorder().flush()
    except Exception as exc:  # noqa: BLE001 - shutting down; nothing else to do
        log_event(logging.WARNING, "run_stats_flush_failed", error=repr(exc))
    finally:
        from django.db import connections

        connections.close_all()


class Upkeep:
    def __init__(self, consumer: Any) -> None:
        self.app = consumer.app
        self.hostname: str = consumer.hostname
        self.watchdog = WatchdogStep(consumer)
        self.leases = LeaseThread(self.hostname)
        self.broker = BrokerUpkeep(self.app, self.hostname)
        self.writer = WriterStep(consumer, None)
        self.runstats = RunStatsStep()
        # Started in this order, stopped in reverse: the writer records its last completions
        # while the lease keeper still renews their claims; run statistics flush last.
        self.steps: dict[str, Step] = {
            "runstats": self.runstats,
            "watchdog": self.watchdog,
            "leases": self.leases,
            "broker": self.broker,
            "writer": self.writer,
        }

    def start(self) -> None:
        for step in self.steps.values():
            step.start()

    def stop(self) -> None:
        for step in reversed(self.steps.values()):
            step.stop()


_upkeep: Upkeep | None = None


def hostname() -> str | None:
    """The node name of the worker this process is the main process of (None elsewhere)."""
    return _upkeep.hostname if _upkeep is not None else None


def start(consumer: Any) -> Upkeep:
    """``worker_ready``: start every step."""
    global _upkeep
    if _upkeep is not None:
        stop()
    _upkeep = Upkeep(consumer)
    node.set_hostname(consumer.hostname)
    _upkeep.start()
    log_event(logging.INFO, "upkeep_started", worker=consumer.hostname)
    return _upkeep


def stop(hostname: str | None = None) -> bool:
    """Stop every step, in reverse order; False if none were running. Even then the amortized
    writer, which exists from before the fork, is stopped: the worker may never have become
    ready."""
    global _upkeep
    room, _upkeep = _upkeep, None
    node.set_hostname(None)
    if room is None:
        amortized.stop_and_acknowledge(hostname)
        return False
    room.writer.hostname = hostname
    room.stop()
    return True
