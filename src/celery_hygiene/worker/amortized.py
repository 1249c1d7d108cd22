"""Amortized completion (opt-in, ``AMORTIZED_COMPLETION``): the worker's main process records
the completions of all its pool processes, one statement per batch.

Without it every body's completion is a commit of its own in the pool process, waited for
before the process takes its next message. With it a pool process hands the completion to its
main process over a pipe and moves on; a writer thread there lets a batch fill for
``AMORTIZED_COMPLETION_GATHER_MS`` after its first record, then records it in one
``UPDATE .. FROM unnest(..)``, the way lease renewal already works.

Why a pipe: the main process must learn *which attempt* of *which claim* finished, and Celery's
result channel carries neither (a success sends only the return value's repr). The pipe is
made before the pool forks, so every pool process inherits it; each record is one ``write`` of
at most ``PIPE_BUF`` bytes, which the kernel never interleaves with another's (larger records,
i.e. big results, are completed in the pool process as usual).

Why acknowledgements wait (``acks_late``): a pool process writes its record *before* Celery
sends its result to the main process, so when the main process acknowledges a finished
request, the record is already in the pipe. ``HygieneRequest`` (the pool-process side,
``task/handover.py``, with ``hand_over`` and the pipe's send end) hands that
acknowledgement to the writer, which lets it go only after a batch that contained the record
has committed; the event loop then sends it (kombu channels are not thread-safe). So a
message is acknowledged only once its completion is recorded, as without this setting.

What it changes on a crash: the window between the end of the body and the record of it grows
from one statement in the pool process to "until the batch commits" (the gather time plus a
statement; longer while the database is away, when records wait in memory and are retried).
If the whole worker dies in that window the record is lost: with ``acks_late`` the message
comes back and runs the body again once the lease has lapsed (the same as a kill between body
and completion today); with early acknowledgement the claim stays ``running`` until its lease
lapses, and a later duplicate runs the body again. A pool process alone dying loses nothing
that was already written to the pipe: the main process records it (:func:`flush`) before it
dead-letters the run or frees its lease. Only the prefork pool (the one with a separate main
process) amortizes; other pools, atomic mode and eager calls complete as usual.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from celery.worker.request import Request

from celery_hygiene import conf
from celery_hygiene.claims import state as claims
from celery_hygiene.claims.dbretry import DB_ERRORS, close_broken_connections
from celery_hygiene.events import log_event
from celery_hygiene.task import handover

# The pool-process side lives in the task room (task/handover.py); re-exported here, where
# this module's readers and its public path (celery_hygiene.amortized) always found them.
from celery_hygiene.task.handover import (
    RECORD_MAX_BYTES,
    Channel,
    Completion,
    HygieneRequest,
    _holds_acks,
    flush,
    hand_over,
)

__all__ = [
    "MAX_BATCH",
    "RECORD_MAX_BYTES",
    "Channel",
    "Completion",
    "CompletionWriter",
    "HygieneRequest",
    "_holds_acks",
    "enabled",
    "flush",
    "hand_over",
    "in_pool_process",
    "last_totals",
    "prepare",
    "record",
    "register_with_event_loop",
    "start",
    "stop",
    "stop_and_acknowledge",
    "supervise",
    "unrecorded",
    "writer",
]

MAX_BATCH = 1000  # rows per statement; a bigger backlog (after an outage) takes a few


class CompletionWriter:
    """The main process's writer: drains the pipe, records batches, releases acknowledgements.

    Records are never dropped: while the database refuses them they stay in memory (the pipe is
    still drained, so pool processes never block on it) and are written when it is back; the
    acknowledgements of their messages wait with them. Its thread is supervised
    (:meth:`ensure_running`, from the lease thread): one that died is started again.
    """

    def __init__(self, channel: Channel, hostname: str) -> None:
        self.channel = channel
        self.hostname = hostname
        self.pending: list[Completion] = []
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # ``pending`` and the writes: this thread or flush_now()
        self._draining = threading.Lock()  # the pipe's read end and its partial record
        self._arrived: list[Completion] = []  # drained, not yet pending; guarded by _lock
        self._unrecorded: dict[str, Completion] = {}  # owner task id -> record; under _lock
        # (request, monotonic time it was held); guarded by _lock; appended by the event loop
        self._held_acks: list[tuple[Request, float]] = []
        self._next_ack_warning = 0.0
        self.ackable: deque[tuple[Request, float]] = deque()  # filled here, sent by the loop
        self._kick_r, self._kick_w = os.pipe()  # wakes this thread when an ack is held
        self.wake_r, self._wake_w = os.pipe()  # wakes the event loop when acks may go
        for fd in (self._kick_r, self._kick_w, self.wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._retry_wait = 0.0
        self._next_try = 0.0  # time.monotonic() before which a failed batch is not retried
        self.batches = 0
        self.recorded = 0
        self.gather_seconds = float(conf.get("AMORTIZED_COMPLETION_GATHER_MS")) / 1000

    # -- called from the event loop -------------------------------------------------------

    def hold_ack(self, request: Request) -> None:
        """Acknowledge ``request`` once every completion its pool process sent is recorded."""
        with self._lock:
            self._held_acks.append((request, time.monotonic()))
        _poke(self._kick_w)

    def release_acks(self, *, now: bool = False) -> int:
        """The event loop's reader callback: acknowledge what the writer released. Always on
        the thread that owns the broker channel.

        ``now``: at shutdown, once the event loop has closed. Celery's acknowledgement is a
        callback queued on the loop, which would never run; the ack is sent directly instead.
        """
        _empty(self.wake_r)
        released = 0
        while self.ackable:
            request, _ = self.ackable.popleft()
            try:
                if now:
                    _ack_directly(request)
                else:
                    Request.acknowledge(request)
            except Exception as exc:  # noqa: BLE001 - this one comes back; send the others
                log_event(logging.WARNING, "amortized_ack_failed", id=request.id, error=repr(exc))
            released += 1
        return released

    def check_held(self) -> None:
        """Log acknowledgements held longer than ``AMORTIZED_ACK_WARN_SECONDS`` (at most once
        per that interval): a batch the database keeps refusing, or an event loop that no
        longer sends what the writer released."""
        limit = float(conf.get("AMORTIZED_ACK_WARN_SECONDS"))
        now = time.monotonic()
        if now < self._next_ack_warning:
            return
        with self._lock:
            waiting = [held for _, held in self._held_acks]
        released = [held for _, held in list(self.ackable)]
        oldest = min(waiting + released, default=now)
        if now - oldest < limit:
            return
        self._next_ack_warning = now + limit
        log_event(
            logging.WARNING,
            "amortized_acks_stuck",
            worker=self.hostname,
            waiting_for_record=len(waiting),
            released_not_sent=len(released),
            oldest_seconds=round(now - oldest, 1),
        )

    def unrecorded(self) -> dict[str, Completion]:
        """Completions handed over and not yet recorded, by owner task id (any thread; drains
        the pipe first, so a record written before this call is in it)."""
        self.collect()
        with self._lock:
            return dict(self._unrecorded)

    def collect(self) -> None:
        """Move what the pipe holds into memory (never blocks; any thread)."""
        with self._draining:
            records = self.channel.drain()
        if records:
            with self._lock:
                self._arrived.extend(records)
                for c in records:
                    self._unrecorded[c.owner_task_id] = c
            if threading.current_thread() is not self._thread:
                _poke(self._kick_w)  # the pipe it waits on is empty now: wake it for these

    def flush_now(self) -> None:
        """Record every completion sent so far, before the caller goes on (any thread).

        The main process calls it before it acts on a pool process's death: a body that handed
        over its completion and then died (OOM, a kill, a time limit after the body) has
        finished, and must be recorded as such, not dead-lettered or handed to a redelivery.
        """
        self._write_arrived(back_off=False)

    # -- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name="celery-hygiene-completions", daemon=True
        )
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def ensure_running(self) -> bool:
        """Start the thread again if it died (supervision); True if it had to."""
        if self.stopped.is_set() or self.is_alive():
            return False
        log_event(logging.ERROR, "completion_writer_restarted", worker=self.hostname)
        self.start()
        return True

    def run(self) -> None:
        watched = [self.channel.read_fd, self._kick_r]
        while not self.stopped.is_set():
            timeout = max(0.0, self._next_try - time.monotonic()) if self.pending else 1.0
            try:
                ready, _, _ = select.select(watched, [], [], timeout)
            except (OSError, ValueError):
                return  # the pipes were closed under us: the worker is going away
            if ready and self.gather_seconds:
                # Let the batch fill: every record arriving meanwhile shares its statement and
                # its commit, and the thread wakes (and takes the GIL from the event loop) less.
                # A shutdown does not wait for it.
                self.stopped.wait(self.gather_seconds)
            _empty(self._kick_r)
            try:
                self.cycle()
                self.check_held()
            except Exception as exc:  # noqa: BLE001 - kept in memory, tried again; stay alive
                close_broken_connections()
                log_event(
                    logging.ERROR, "completion_writer_failed", worker=self.hostname, error=repr(exc)
                )
                self.stopped.wait(1.0)

    def cycle(self) -> None:
        """One round: take the held acks, drain the pipe, write, release what is recorded.

        The order matters: an ack is held only after its pool process wrote its record, so
        draining *after* taking the held acks is sure to see the records they wait for.
        """
        with self._lock:
            held, self._held_acks = self._held_acks, []
        self._write_arrived(back_off=True)
        self._release_recorded(held)

    def _release_recorded(self, held: list[tuple[Request, float]]) -> None:
        with self._lock:
            waiting = set(self._unrecorded)
            self._held_acks[:0] = [h for h in held if h[0].id in waiting]
        go = [h for h in held if h[0].id not in waiting]
        if go:
            self.ackable.extend(go)
            _poke(self._wake_w)

    def _write_arrived(self, *, back_off: bool) -> None:
        """Drain the pipe and write what is pending (after a failure, with ``back_off``, only
        once its wait is over)."""
        with self._writing:
            self.collect()
            with self._lock:
                arrived, self._arrived = self._arrived, []
            self.pending.extend(arrived)
            if self.pending and not (back_off and time.monotonic() < self._next_try):
                self._write()

    def _write(self) -> None:
        # The thread keeps its connection across batches whatever CONN_MAX_AGE says (a new
        # connection per batch would cost more than the batch); one that went stale (server
        # restart, idle timeout) is replaced by a second try at once, before anything is logged.
        for last_try in (False, True):
            try:
                self._write_pending()
            except DB_ERRORS as exc:
                close_broken_connections()
                if last_try or self._retry_wait:
                    self._back_off(exc)
                    return
            except Exception as exc:  # noqa: BLE001 - kept, retried; never let the thread die
                close_broken_connections()
                self._back_off(exc)
                return
            else:
                self._retry_wait = self._next_try = 0.0
                return

    def _write_pending(self) -> None:
        while self.pending:
            batch = self.pending[:MAX_BATCH]
            recorded = record(batch)
            del self.pending[: len(batch)]
            with self._lock:
                for c in batch:
                    if self._unrecorded.get(c.owner_task_id) is c:
                        del self._unrecorded[c.owner_task_id]
            self._report(batch, recorded)

    def _back_off(self, exc: Exception) -> None:
        max_wait = float(conf.get("DB_RETRY_MAX_WAIT"))
        self._retry_wait = min(max_wait, max(0.1, self._retry_wait * 2))
        self._next_try = time.monotonic() + self._retry_wait
        log_event(
            logging.WARNING,
            "completion_batch_failed",
            worker=self.hostname,
            waiting=len(self.pending),
            retry_in=self._retry_wait,
            error=repr(exc),
        )

    def _report(self, batch: list[Completion], recorded: set[tuple[str, str, str]]) -> None:
        self.batches += 1
        self.recorded += len(recorded)
        for c in batch:
            if (c.entity, c.operation, c.owner_task_id) not in recorded:
                # Same meaning as the inline completion's warning: the lease lapsed and another
                # worker took the claim over before this record was written.
                log_event(
                    logging.WARNING,
                    "task_claim_lost",
                    entity=c.entity,
                    operation=c.operation,
                    id=c.owner_task_id,
                    worker=self.hostname,
                    detail="lease expired and was taken over before the batched completion",
                )

    def finish(self, budget: float) -> int:
        """At shutdown, after the pool has stopped: record what is left (bounded by ``budget``).

        Returns the number of records that could not be written (logged; their claims keep
        their leases and lapse, so the body may run again, as after a crash).
        """
        self.stopped.set()
        _poke(self._kick_w)
        self.join(timeout=5)
        deadline = time.monotonic() + budget
        self._write_arrived(back_off=False)
        while self.pending and time.monotonic() < deadline:
            time.sleep(min(self._retry_wait, max(0.0, deadline - time.monotonic())))
            self._write_arrived(back_off=False)
        with self._lock:
            held, self._held_acks = self._held_acks, []
        self._release_recorded(held)  # the caller sends them (send_released_acks)
        log_event(
            logging.INFO,
            "amortized_completion_stopped",
            worker=self.hostname,
            batches=self.batches,
            recorded=self.recorded,
        )
        if self.pending:
            log_event(
                logging.ERROR,
                "completion_batch_abandoned",
                worker=self.hostname,
                records=len(self.pending),
                ids=[c.owner_task_id for c in self.pending[:20]],
            )
        return len(self.pending)


def record(batch: Iterable[Completion]) -> set[tuple[str, str, str]]:
    """Write completions, one statement per database; returns (entity, operation, owner) of
    the claims that were still ours and are now ``succeeded``."""
    by_alias: dict[str, list[Completion]] = {}
    for c in batch:
        by_alias.setdefault(c.using, []).append(c)
    recorded: set[tuple[str, str, str]] = set()
    for using, completions in by_alias.items():
        recorded |= claims.complete_many(completions, using=using)
    return recorded


def _ack_directly(request: Request) -> None:
    if request.acknowledged:
        return
    request.message.ack()
    request.acknowledged = True


def _poke(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):  # full of wake-ups already: fine
        os.write(fd, b"x")


def _empty(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


# -- process-wide state ----------------------------------------------------------------------

_channel: Channel | None = None
_writer: CompletionWriter | None = None
_last_totals: dict[str, int] = {}


def enabled() -> bool:
    return bool(conf.get("AMORTIZED_COMPLETION"))


def prepare() -> Channel | None:
    """``worker_before_create_process`` (the main process, before it forks a pool process).

    That signal is sent only by the prefork pool that runs under Celery's event loop, which is
    exactly where this works: the pipe needs pool processes forked from the main process, and
    held acknowledgements are sent by the event loop. The pipe is made once and inherited by
    every later fork; the writer starts now, so no completion waits for the worker to be ready
    (acknowledgements released before then wait in the wake-up pipe until :func:`start`).
    """
    global _channel, _writer
    if _channel is None and enabled():
        _channel = Channel()
        _writer = CompletionWriter(_channel, socket.gethostname())
        handover.connect(_channel, _writer)
        _writer.start()
    return _channel


def register_with_event_loop(hub: Any) -> None:
    """Let the event loop send the acknowledgements the writer releases.

    Called by the consumer step (``worker/consumer_step.py``) each time Celery (re)starts its event
    loop:
    a reset after a lost broker connection drops every reader, this one included.
    """
    writer = _writer
    if writer is not None and not writer.channel.in_pool_process():
        hub.add_reader(writer.wake_r, writer.release_acks)


def start(consumer: Any) -> CompletionWriter | None:
    """``worker_ready``: the writer learns the worker's name; checks the event-loop hook."""
    writer = _writer
    if writer is None or writer.channel.in_pool_process():
        return None
    writer.hostname = consumer.hostname
    from celery_hygiene.worker.consumer_step import HygieneConsumerStep

    if not any(isinstance(step, HygieneConsumerStep) for step in consumer.steps or ()):
        # The step is added at worker_init; a worker started some other way gets the reader
        # once (acknowledgements then stop after a broker reconnect: amortized_acks_stuck).
        log_event(logging.ERROR, "amortized_completion_no_consumer_step", worker=consumer.hostname)
        hub = getattr(consumer.controller, "hub", None) or getattr(consumer, "hub", None)
        if hub is not None:
            register_with_event_loop(hub)
    log_event(logging.INFO, "amortized_completion_started", worker=consumer.hostname)
    return writer


def stop() -> CompletionWriter | None:
    """The pool has stopped (consumer step shutdown, warm or cold; else ``worker_shutdown``):
    write what is left. The caller sends the acknowledgements released by that."""
    global _writer
    writer, _writer = _writer, None
    handover.connect(_channel, None)
    if writer is not None:
        writer.finish(float(conf.get("DB_RETRY_SECONDS")))
        _last_totals.update(batches=writer.batches, recorded=writer.recorded)
    return writer


def stop_and_acknowledge(hostname: str | None = None) -> None:
    """At shutdown, after the pool has stopped, on the thread that owns the broker channel
    (the event loop no longer runs): record what is left, then send the acknowledgements that
    were waiting for it, so those messages do not come back."""
    writer = stop()
    if writer is None:
        return
    sent = writer.release_acks(now=True)
    with writer._lock:
        still_held = len(writer._held_acks)
    log_event(
        logging.INFO,
        "amortized_acks_sent_at_shutdown",
        worker=hostname or writer.hostname,
        sent=sent,
        not_recorded=still_held,
    )


def unrecorded() -> dict[str, Completion]:
    """In the main process: completions handed over and not recorded yet (else empty)."""
    writer = _writer
    if writer is None or writer.channel.in_pool_process():
        return {}
    return writer.unrecorded()


def supervise() -> None:
    """In the main process: restart the writer's thread if it died."""
    writer = _writer
    if writer is not None and not writer.channel.in_pool_process():
        writer.ensure_running()


def writer() -> CompletionWriter | None:
    return _writer


def last_totals() -> dict[str, int]:
    """Batches written and completions recorded by this process's last stopped writer."""
    return dict(_last_totals)


def in_pool_process() -> None:
    """``worker_process_init``: a fresh pool process keeps only the write end."""
    global _writer
    if _channel is not None and _channel.in_pool_process():
        _channel.forget_read_end()
        _writer = None  # the main process's writer; its thread does not exist here
        handover.connect(_channel, None)
