"""Lease heartbeats: the worker's main process keeps the claims of running bodies alive.

A lease that only ends when its owner says so would never free a crashed worker's claim; a lease
that is never renewed lets a slow but live body be taken over and run twice. So leases are short
(``DEFAULT_LEASE_SECONDS``, a minute) and renewed from outside the task: the main process already
knows every request its pool is running (the scan in ``worker/running.py``), computes each
one's claim key once, and renews all claims that are due in one statement. A body that runs for
an hour keeps its claim; a worker that dies stops renewing and its claims lapse within one lease.

Renewal runs in a thread of the main process that does nothing else and depends on PostgreSQL
alone (:class:`LeaseThread`): not in the event loop (a database outage must not stall message
handling), not behind broker I/O (a silent broker must not stop it: ``worker/broker_upkeep.py`` has
its
own thread), and never in the pool processes (a body stuck in C code cannot stop its own
heartbeat, nor fake one). Its connection has a connect timeout and each renewal a statement
timeout well below a third of the shortest lease, so one hung attempt cannot outlast a lease.
Atomic claims are not renewed: their row is uncommitted until the body ends, and the open
transaction itself is the lease (it dies with its process).

With ``AMORTIZED_COMPLETION`` a finished body's claim stays ``running`` until the main process
records its completion; the keeper renews such claims too, until they are recorded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction

from celery_hygiene import conf
from celery_hygiene.claims import state as claims
from celery_hygiene.claims.dbretry import close_broken_connections
from celery_hygiene.events import log_event
from celery_hygiene.models import TaskClaim
from celery_hygiene.task.enqueue import task_id_claim_key
from celery_hygiene.worker import amortized
from celery_hygiene.worker.running import started_requests

# Renew when a third of the lease is left to run: two missed heartbeats (a database blip) still
# leave the claim with its owner.
RENEW_FRACTION = 1 / 3
TICK_SECONDS = conf.LEASE_TICK_SECONDS
STATEMENT_TIMEOUT_MAX = 5.0  # seconds; a renewal is one indexed UPDATE, normally milliseconds
CONNECT_TIMEOUT_MIN = 2  # libpq and psycopg treat anything shorter as 2 s


@dataclass
class _Tracked:
    held: claims.Held
    renewed_at: float  # epoch seconds of the last renewal (or of the start of the run)


def renewal_timeout(lease_seconds: float) -> float:
    """How long one renewal statement may take: half of the time between two renewals, so a
    hung statement gives up with the claim still live and the next tick tries again."""
    return min(STATEMENT_TIMEOUT_MAX, lease_seconds * RENEW_FRACTION / 2)


class LeaseKeeper:
    """Renews the claims of this worker's running requests; one instance per worker."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.tracked: dict[str, _Tracked | None] = {}  # task id -> claim (None: no claim to keep)
        self.lost: set[str] = set()  # task ids whose claim another owner took: not renewed
        self.last_scan = time.time()

    def tick(self, now: float | None = None) -> int:
        """Renew whatever is due; returns the number of claims renewed."""
        now = time.time() if now is None else now
        running: set[str] = set()
        for request in started_requests():
            running.add(request.id)
            if request.id not in self.tracked:
                self.tracked[request.id] = self._claim_of(request)
        # Read after the scan: a request that left it had its completion written to the pipe
        # before its result reached this process, so it is in here (see amortized.unrecorded).
        unrecorded = amortized.unrecorded()
        for completion in unrecorded.values():
            if completion.owner_task_id not in self.tracked and completion.lease_seconds:
                # Never seen running (a short body): its lease began after the previous scan.
                held = claims.Held(
                    completion.entity,
                    completion.operation,
                    completion.owner_task_id,
                    completion.lease_seconds,
                )
                self.tracked[completion.owner_task_id] = _Tracked(held, self.last_scan - 1.0)
        self.last_scan = now
        for task_id in list(self.tracked):
            if task_id not in running and task_id not in unrecorded:
                del self.tracked[task_id]
                self.lost.discard(task_id)
        due = [
            tracked
            for task_id, tracked in self.tracked.items()
            if tracked is not None
            and task_id not in self.lost
            and now - tracked.renewed_at >= tracked.held.lease_seconds * RENEW_FRACTION
        ]
        if not due:
            return 0
        return self._renew(due, now)

    def _renew(self, due: list[_Tracked], now: float) -> int:
        using = claims.write_alias()
        shortest = min(t.held.lease_seconds for t in due)
        try:
            renewed = self._renew_bounded(using, [t.held for t in due], shortest)
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
        if renewed < len(due):
            self._report_lost(using, due)
        return renewed

    def _renew_bounded(self, using: str, held: list[claims.Held], shortest: float) -> int:
        connection = connections[using]
        if connection.vendor != "postgresql":
            return claims.renew(held, worker=self.hostname, using=using)
        _bound_connect(connection, shortest)
        # SET LOCAL ends with the transaction: no session state is left behind, so this works
        # behind PgBouncer in transaction mode too.
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true)",
                [f"{math.ceil(renewal_timeout(shortest) * 1000)}ms"],
            )
            return claims.renew(held, worker=self.hostname, using=using)

    def _report_lost(self, using: str, due: list[_Tracked]) -> None:
        """Some claims were not renewed: those another owner holds now are lost (logged once).

        A claim this run finished (succeeded, released for a retry, forgotten) in the meantime
        is not renewed either, and is not lost: its request just has not left the scan yet.
        """
        mine = {(t.held.entity, t.held.operation): t.held for t in due}
        try:
            rows = list(
                TaskClaim.objects.using(using)
                .filter(entity__in={e for e, _ in mine}, operation__in={o for _, o in mine})
                .values_list("entity", "operation", "owner_task_id", "owner_worker", "status")
            )
        except Exception as exc:  # noqa: BLE001 - only a report; the next tick looks again
            close_broken_connections()
            log_event(logging.WARNING, "lease_check_failed", worker=self.hostname, error=repr(exc))
            return
        for entity, operation, owner, worker, status in rows:
            held = mine.get((entity, operation))
            if held is None or (owner, worker) == (held.owner_task_id, self.hostname):
                continue
            self.lost.add(held.owner_task_id)
            log_event(
                logging.ERROR,
                "lease_lost",
                entity=entity,
                operation=operation,
                id=held.owner_task_id,
                worker=self.hostname,
                holder=owner,
                holder_worker=worker,
                status=status,
                detail="the lease lapsed and another run took the claim while this body runs",
            )

    def _claim_of(self, request: Any) -> _Tracked | None:
        task = request.task
        spec = getattr(task, "hygiene_idempotency", None)
        if spec is None:  # an intent's run of a claim-less task holds a claim by task id
            key = task_id_claim_key(task, request)
        elif spec.atomic or not hasattr(task, "claim_key_or_none"):
            return None
        else:
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


def _bound_connect(connection: Any, lease_seconds: float) -> None:
    """Give this thread's own connection a connect timeout below a third of the lease (libpq's
    floor is 2 s). The wrapper is this thread's alone, so its settings can differ."""
    seconds = max(CONNECT_TIMEOUT_MIN, int(lease_seconds * RENEW_FRACTION))
    options = connection.settings_dict.get("OPTIONS") or {}
    if options.get("connect_timeout") == seconds:
        return  # (a new value applies to the next connection, after a failure)
    connection.settings_dict = {
        **connection.settings_dict,
        "OPTIONS": {**options, "connect_timeout": seconds},
    }


class LeaseThread(threading.Thread):
    """The worker's lease keeper: a thread of its own that talks to PostgreSQL only.

    Its connection stays open across ticks whatever ``CONN_MAX_AGE`` says (reconnecting every
    tick would add a failure point to every heartbeat); a broken one is closed and reopened.
    """

    def __init__(self, hostname: str) -> None:
        super().__init__(name="celery-hygiene-leases", daemon=True)
        self.keeper = LeaseKeeper(hostname)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(TICK_SECONDS):
            try:
                self.keeper.tick()
                amortized.supervise()
            except Exception as exc:  # noqa: BLE001 - never let the heartbeat die
                close_broken_connections()
                log_event(
                    logging.ERROR, "lease_tick_failed", worker=self.keeper.hostname, error=repr(exc)
                )
        connections.close_all()

    def stop(self) -> None:
        self.stopped.set()
