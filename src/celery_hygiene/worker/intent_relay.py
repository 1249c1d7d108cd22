"""The worker's share of the enqueue relay: re-send unsettled intents (``failures/intents.py``).

A step of the broker-I/O thread (``worker/broker_upkeep.py``), never of the lease thread: a
re-send waits on the broker. Every ``ENQUEUE_SWEEP_SECONDS`` it runs one relay round on the
thread's broker connection (socket timeouts, ``UPKEEP_BROKER_TIMEOUT_SECONDS``); several workers
share the backlog through ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from celery_hygiene import conf
from celery_hygiene.claims.dbretry import close_broken_connections
from celery_hygiene.events import log_event
from celery_hygiene.failures import intents


class IntentRelay:
    def __init__(self, app: Any, hostname: str, connect: Callable[[Any], Any]) -> None:
        self.app = app
        self.hostname = hostname
        self.connect = connect
        self.next_round = 0.0

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self.next_round:
            return
        self.next_round = now + float(conf.get("ENQUEUE_SWEEP_SECONDS"))
        connection = self.connect(self.app)  # kombu connects on first use: only if sending
        try:
            done = intents.relay(self.app, connection=connection)
        except Exception as exc:  # noqa: BLE001 - database away: next round
            close_broken_connections()
            log_event(
                logging.WARNING, "enqueue_relay_failed", worker=self.hostname, error=repr(exc)
            )
            return
        finally:
            with contextlib.suppress(Exception):
                connection.release()
        if done.sent or done.undeliverable or done.failed:
            log_event(
                logging.INFO,
                "enqueue_relay_round",
                worker=self.hostname,
                sent=done.sent,
                settled=done.settled,
                undeliverable=done.undeliverable,
                failed=done.failed,
            )
