"""Amortized completion, the pool-process side: hand a finished body's completion to the
worker's main process, and the Request that holds an acks-late message's acknowledgement until
that completion is recorded.

The main process's side (the writer thread that records batches and releases the held
acknowledgements) is ``worker/amortized.py``, which explains the whole mechanism. It makes the
pipe before the pool forks and connects it here (:func:`connect`), with itself as the
:class:`Receiver`; this module imports nothing from the worker room.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from celery.utils.imports import symbol_by_name
from celery.worker.request import Request

from celery_hygiene.claims import state as claims
from celery_hygiene.events import log_event
from celery_hygiene.task import node

# One write of up to PIPE_BUF bytes to a pipe is atomic (POSIX): records never interleave.
RECORD_MAX_BYTES = select.PIPE_BUF
_READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class Completion(claims.Finished):
    """What a pool process reports once a body has finished: the claim, fenced by its attempt,
    and the database it lives on."""

    using: str
    lease_seconds: float = 0.0  # the claim's lease: renewed (worker/leases.py) until it is recorded

    def encode(self) -> bytes:
        fields = [
            self.entity,
            self.operation,
            self.owner_task_id,
            self.attempts,
            self.result_json,
            self.using,
            self.lease_seconds,
        ]
        return json.dumps(fields, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Completion:
        entity, operation, owner, attempts, result, using, lease = json.loads(line)
        return cls(entity, operation, owner, int(attempts), result, using, float(lease))


class Channel:
    """The pipe from the pool processes to their main process (made before the pool forks)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        # Pool processes never wait on the main process: a full pipe (its writer stuck) makes
        # them complete inline instead. A write of up to PIPE_BUF bytes to a non-blocking pipe
        # is still all or nothing.
        os.set_blocking(self.write_fd, False)
        self.main_pid = os.getpid()
        self._partial = b""

    def in_pool_process(self) -> bool:
        return os.getpid() != self.main_pid

    def forget_read_end(self) -> None:
        """In a pool process: only the main process reads. With every other reader closed, a
        write after the main process died fails (EPIPE) instead of filling a pipe nobody reads."""
        with contextlib.suppress(OSError):
            os.close(self.read_fd)

    def send(self, completion: Completion) -> bool:
        """Hand one record to the main process; False if it must be written here instead."""
        data = completion.encode()
        if len(data) > RECORD_MAX_BYTES:
            return False
        try:
            os.write(self.write_fd, data)
        except BlockingIOError:  # full: the main process is not draining it; complete here
            log_event(logging.WARNING, "completion_pipe_full", id=completion.owner_task_id)
            return False
        except OSError:  # the main process is gone: nobody would ever write it
            return False
        return True

    def drain(self) -> list[Completion]:
        """Every complete record in the pipe now (main process; never blocks)."""
        chunks = [self._partial]
        while True:
            try:
                chunk = os.read(self.read_fd, _READ_CHUNK)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        *lines, self._partial = data.split(b"\n")
        return [Completion.decode(line) for line in lines if line]


class Receiver(Protocol):
    """The main process's end of the pipe, as this side uses it (``worker/amortized.py``'s
    ``CompletionWriter``)."""

    channel: Channel

    def hold_ack(self, request: Request) -> None: ...

    def flush_now(self) -> None: ...


# -- process-wide state, set by the worker room (worker/amortized.py) ------------------------

_channel: Channel | None = None
_receiver: Receiver | None = None


def connect(channel: Channel | None, receiver: Receiver | None) -> None:
    """The pipe this process writes completions to, and the main process's receiver of them
    (None in a pool process, and once the writer has stopped)."""
    global _channel, _receiver
    _channel, _receiver = channel, receiver


def flush() -> None:
    """In the main process: record what pool processes have handed over (no-op otherwise)."""
    receiver = _receiver
    if receiver is not None and not receiver.channel.in_pool_process():
        receiver.flush_now()


def hand_over(task: Any, ticket: claims.Ticket, result_json: str | None) -> bool:
    """In a pool process: send the completion to the main process. False: complete it here."""
    channel = _channel
    if channel is None or not channel.in_pool_process():
        return False
    if task.acks_late and not _holds_acks(task.Request):
        return False  # a custom Request class would acknowledge before the record is written
    completion = Completion(
        ticket.key.entity,
        ticket.key.operation,
        ticket.owner_task_id,
        ticket.attempts,
        result_json,
        ticket.using,
        float(ticket.lease_seconds),
    )
    return channel.send(completion)


@lru_cache(maxsize=64)
def _holds_acks(request_cls: Any) -> bool:
    try:
        cls = symbol_by_name(request_cls) if isinstance(request_cls, str) else request_cls
    except Exception:  # noqa: BLE001 - unknown class: do not amortize
        return False
    return isinstance(cls, type) and issubclass(cls, HygieneRequest)


class HygieneRequest(Request):
    """Celery's Request, except that with amortized completion an acks-late message is
    acknowledged only after the batch holding its completion has committed."""

    def acknowledge(self) -> None:
        receiver = _receiver
        if receiver is None or self.acknowledged or not self.task.acks_late:
            super().acknowledge()
            return
        spec = getattr(self.task, "hygiene_idempotency", None)
        if spec is None or spec.atomic:
            super().acknowledge()
            return
        receiver.hold_ack(self)

    # -- a pool process died (prefork) --------------------------------------------------------

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        """A pool process that died: record what it handed over, and when Celery requeues the
        message (``acks_late`` + ``task_reject_on_worker_lost``), end the claim's lease now.

        Celery sends no ``task_failure`` when it requeues, so this is the only place that hears
        of it. Nobody holds the lease any more (the body is dead), and the redelivery takes the
        claim over at once instead of waiting the lease out.
        """
        lost = _is_worker_lost(self, exc_info.exception)
        if lost:
            flush()  # a body that handed over its completion and then died did finish
        self._hygiene_requeued = False
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        if lost and self._hygiene_requeued:
            _release_lost_lease(self)

    def reject(self, requeue: bool = False) -> None:
        if requeue and not self.acknowledged:
            self._hygiene_requeued = True
        super().reject(requeue=requeue)


def _is_worker_lost(request: Request, exc: Any) -> bool:
    from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]
    from billiard.exceptions import WorkerLostError

    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    if isinstance(exc, WorkerLostError):
        return True
    # Billiard >= 4.3 reports the exit itself; Celery treats it as a lost worker unless it
    # killed the process on purpose (revoke, cancel).
    return isinstance(exc, SystemExit | KeyboardInterrupt) and not (
        getattr(request, "_already_cancelled", False) or getattr(request, "_already_revoked", False)
    )


def _release_lost_lease(request: Request) -> None:
    task = request.task
    if not hasattr(task, "release_lost_lease"):
        return
    try:
        task.release_lost_lease(
            request.id, request.args, request.kwargs, node.hostname() or request.hostname
        )
    except Exception as exc:  # noqa: BLE001 - never raise into the event loop; the lease lapses
        log_event(
            logging.ERROR, "lease_release_failed", task=task.name, id=request.id, error=repr(exc)
        )
        return
    log_event(logging.INFO, "lease_released_worker_lost", task=task.name, id=request.id)
