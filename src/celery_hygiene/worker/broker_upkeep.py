"""The worker's own broker I/O: re-sending parked outbox messages and, on a Redis broker, the
restore scan for killed workers' messages.

A thread of its own, apart from lease renewal (``worker/leases.py``): a broker that goes silent (a
partition, a paused or failing-over Redis, a publish waiting for a confirm) can hold it, but not
the heartbeats of running bodies. Its broker connection is its own, with socket timeouts
(``UPKEEP_BROKER_TIMEOUT_SECONDS``: Redis ``socket_timeout``/``socket_connect_timeout``, AMQP
read/write timeouts), so even here a silent broker costs one timeout per round, not forever.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from django.db import connections

from celery_hygiene import conf
from celery_hygiene.claims.dbretry import close_broken_connections
from celery_hygiene.events import log_event
from celery_hygiene.failures import outbox
from celery_hygiene.worker import redis_recovery
from celery_hygiene.worker.intent_relay import IntentRelay

TICK_SECONDS = 1.0


def broker_connection(app: Any) -> Any:
    """A connection for this thread, with socket timeouts on every broker operation."""
    seconds = float(conf.get("UPKEEP_BROKER_TIMEOUT_SECONDS"))
    if redis_recovery.uses_redis(app):
        options: dict[str, Any] = {"socket_timeout": seconds, "socket_connect_timeout": seconds}
    else:  # py-amqp: SO_RCVTIMEO/SO_SNDTIMEO, which also bound a wait for a publish confirm
        options = {"read_timeout": seconds, "write_timeout": seconds}
    return app.connection_for_write(transport_options=options, connect_timeout=seconds)


class BrokerUpkeep(threading.Thread):
    def __init__(self, app: Any, hostname: str) -> None:
        super().__init__(name="celery-hygiene-broker-upkeep", daemon=True)
        self.app = app
        self.hostname = hostname
        self.stopped = threading.Event()
        self.next_sweep = 0.0
        self.next_restore = 0.0
        self.restores = redis_recovery.uses_redis(app)
        self.intents = IntentRelay(app, hostname, broker_connection)

    def run(self) -> None:
        while not self.stopped.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - never let the thread die
                log_event(
                    logging.ERROR, "broker_upkeep_failed", worker=self.hostname, error=repr(exc)
                )
        connections.close_all()

    def stop(self) -> None:
        self.stopped.set()

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + float(conf.get("OUTBOX_SWEEP_SECONDS"))
            self._sweep()
        if self.restores and now >= self.next_restore:
            self.next_restore = now + float(conf.get("REDIS_RESTORE_SECONDS"))
            self._restore()
        self.intents.tick(now)  # delay_on_commit's intents (worker/intent_relay.py)

    def _sweep(self) -> None:
        connection = broker_connection(self.app)  # kombu connects on first use: only if sending
        try:
            outbox.resend_due(self.app, connection=connection)
        except Exception as exc:  # noqa: BLE001 - database away: next sweep
            close_broken_connections()
            log_event(logging.WARNING, "outbox_sweep_failed", worker=self.hostname, error=repr(exc))
        finally:
            with contextlib.suppress(Exception):
                connection.release()

    def _restore(self) -> None:
        try:
            with broker_connection(self.app) as connection:
                redis_recovery.restore_visible(self.app, connection=connection)
        except Exception as exc:  # noqa: BLE001 - broker away: next time
            log_event(
                logging.WARNING, "redis_restore_failed", worker=self.hostname, error=repr(exc)
            )
