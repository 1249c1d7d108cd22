"""The Celery glue: a Task base class that applies claims, the retry policy and dead letters.

``HygieneTask.__call__`` wraps the body. The pieces it glues together each live in their own
module: ``claims`` (who may run), ``retry`` (when to try again), ``deadletters`` (what to keep).
"""

from __future__ import annotations

import datetime as dt
import logging
import numbers
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from django.db import connections, transaction
from django.utils import timezone
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from celery_hygiene import conf, signals
from celery_hygiene.claims import redeliveries
from celery_hygiene.claims import state as claims
from celery_hygiene.claims.dbretry import DB_ERRORS, with_db_retries
from celery_hygiene.claims.spec import IdempotencySpec
from celery_hygiene.claims.state import ClaimKey, ClaimResult, Outcome, Ticket
from celery_hygiene.events import log_event
from celery_hygiene.exceptions import (
    ClaimBusy,
    EntityKeyError,
    HygieneConfigurationError,
    IdempotencyConflict,
    NotFinished,
    ResultNotStorable,
)
from celery_hygiene.failures import deadletters, outbox
from celery_hygiene.failures.retry import (
    DEFAULT_POLICY,
    CeleryRetries,
    Decision,
    RetryPolicy,
    celery_retries,
    coerce_policy,
)
from celery_hygiene.models import DeadLetterReason, TaskClaim
from celery_hygiene.task import publishing
from celery_hygiene.task.enqueue import OnCommitMixin, task_id_spec
from celery_hygiene.worker import amortized, upkeep

FIRST_FAILED_HEADER = "celery_hygiene_first_failed_at"
FIRST_STARTED_HEADER = "celery_hygiene_first_started_at"
# Set on the exception Celery raises from a body's own self.retry() once max_retries is reached.
_CAP_REACHED = "_celery_hygiene_retry_cap_reached"
# The claim attempt a scheduled retry was released at: only that message resumes the claim.
RETRY_TOKEN_HEADER = "celery_hygiene_retry_token"
# When a message first found the database unreachable at claim time (epoch seconds).
CLAIM_WAIT_HEADER = "celery_hygiene_claim_wait_since"
CLAIM_TRIES_HEADER = "celery_hygiene_claim_tries"
# How many times this message has waited for a busy claim: its next look comes sooner than the
# holder's lease, then later and later (the holder is usually about to finish).
DEFERS_HEADER = "celery_hygiene_defers"
# Headers that describe one wait (for the database at claim time, for a busy claim). A message
# that got past it (its claim was read, or its body ran) does not carry it into the next one: a
# short blip long after an old outage gets the whole CLAIM_RETRY_SECONDS budget again.
_CLAIM_WAIT_HEADERS = (CLAIM_WAIT_HEADER, CLAIM_TRIES_HEADER)
_ATTEMPT_WAIT_HEADERS = (*_CLAIM_WAIT_HEADERS, DEFERS_HEADER)
# Never copied into a follow-up message: the outbox row this copy was sent for (the follow-up
# is another message), and RabbitMQ's dead-lettering history (it trips cycle detection).
_NOT_CARRIED = (
    outbox.ROW_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)
FIRST_DEFER_SECONDS = 0.5
_CONTROL_FLOW = (Retry, Ignore, Reject)
_TIME_LIMITS = (SoftTimeLimitExceeded, TimeLimitExceeded)


_P = ParamSpec("_P")
_R_co = TypeVar("_R_co", covariant=True)

# celery-types makes Task generic in the task's parameters and return value (Task[P, R]), which
# is what keeps a decorated task's signature. celery's own Task is subscriptable only from 5.7
# on, so at runtime HygieneTask's base is plain celery.Task, whatever the celery version.
if TYPE_CHECKING:
    _TaskBase = Task
else:

    class _TaskBase:
        def __class_getitem__(cls, params: object) -> type[Task]:
            return Task


class HygieneTask(OnCommitMixin, _TaskBase[_P, _R_co]):
    """Base class for tasks with bounded retries and dead letters (and claims, if idempotent).

    Use it directly (``@app.task(base=HygieneTask)``, ``Celery(task_cls=...)``) or through the
    ``hygienic_task`` and ``idempotent_task`` decorators. Class attributes, set by the decorators
    (or as task options, ``@app.task(hygiene_retry=...)``):

    - ``hygiene_retry``: the retry policy the task chose: a RetryPolicy (or a dict of its
      arguments), or ``"default"`` for ``CELERY_HYGIENE["DEFAULT_RETRY_POLICY"]`` (what the
      decorators set without ``retry=`` or Celery options). None (no choice, e.g. every task of
      a ``task_cls`` app): Celery's own retries for this task, unchanged (``celery_retries``).
    - ``hygiene_idempotency``: an IdempotencySpec, or None for tasks without a claim.
    - ``expected_duration``: seconds before the duration watchdog flags a run (None: default).
    """

    hygiene_retry: RetryPolicy | dict[str, Any] | Literal["default"] | None = None
    hygiene_idempotency: IdempotencySpec | None = None
    expected_duration: float | None = None
    # The Celery retry options a decorator translated (and removed), for the dry-run view.
    hygiene_celery_options: dict[str, Any] | None = None
    # Celery's Request, except that with AMORTIZED_COMPLETION an acks-late message waits for its
    # batched completion before it is acknowledged (worker/amortized.py). Unchanged behaviour
    # otherwise.
    Request = "celery_hygiene.worker.amortized:HygieneRequest"

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co:
        request = self.request
        if request.called_directly:  # a plain function call, like any Celery task
            return super().__call__(*args, **kwargs)
        # In a worker the value is what the result backend stores (for a skipped duplicate,
        # the first run's result or None); callers see it as the body's return type, as they
        # do for any Celery task.
        if request.is_eager:
            return cast(_R_co, self._call_eager(args, kwargs))
        if not outbox.take(request, self.name):
            # A second copy of a message re-sent from the outbox: another copy has run it. Ignore
            # leaves the result that copy stored alone.
            raise Ignore()
        spec = self.hygiene_idempotency or task_id_spec(self)  # enqueue.py: an intent's run
        if spec is None:
            return cast(_R_co, self._call_plain(args, kwargs))
        try:
            return cast(_R_co, self._call_idempotent(spec, args, kwargs))
        except (EntityKeyError, IdempotencyConflict) as exc:
            # The message cannot run as sent; keep it where an operator will see it.
            self._dead_letter(
                exc,
                reason=DeadLetterReason.GAVE_UP,
                attempts=self.request.retries + 1,
                ticket=None,
                key=None,
            )
            raise

    # -- policy and context --------------------------------------------------------------

    def hygiene_policy(self) -> RetryPolicy:
        """The policy asked after a failure; Celery's own retries if the task chose none."""
        chosen = self.hygiene_retry
        if chosen is None:
            return self.celery_retries().policy
        if isinstance(chosen, str):
            if chosen != "default":
                raise HygieneConfigurationError(
                    f"{self.name}: hygiene_retry={chosen!r}: use a RetryPolicy, a dict of its "
                    "arguments, \"default\" (CELERY_HYGIENE['DEFAULT_RETRY_POLICY']), or None "
                    "(Celery's own retries)."
                )
            return default_policy()
        return coerce_policy(chosen)

    def celery_retries(self) -> CeleryRetries:
        """How Celery would retry this task (its autoretry options, ``max_retries``) as a policy:
        what a task without ``hygiene_retry`` keeps. ``max_retries=None`` is held to the default
        policy's ``max_attempts``."""
        return celery_retries(self, forever_attempts=default_policy().max_attempts)

    def _retry_cap(self) -> int:
        """The ``max_retries`` a body's own ``self.retry()`` is held to."""
        if self.hygiene_retry is None:
            return self.celery_retries().retry_cap
        return self.hygiene_policy().max_attempts - 1

    def _body(self) -> Callable[..., Any]:
        """The task's own ``run``. Celery wraps ``run`` in its autoretry for a task with
        ``autoretry_for`` that reached it unchanged (``task_cls``, ``base=``); in a worker the
        policy retries instead (same attempts and delays, plus parking and attempt counting).
        Eager mode keeps Celery's wrapper: there, retries run in place as Celery runs them."""
        original = self.__dict__.get("_orig_run")
        return cast("Callable[..., Any]", original) if original is not None else self.run

    def hygiene_lease_seconds(self) -> float:
        """The claim lease: ``lease_seconds=``, else ``DEFAULT_LEASE_SECONDS``.

        Independent of time limits: the worker renews the lease while the body runs (see
        ``worker/leases.py``), so it only bounds how long a dead owner's claim stays blocked.
        """
        spec = self.hygiene_idempotency
        if spec is not None and spec.lease_seconds is not None:
            return float(spec.lease_seconds)
        return float(conf.get("DEFAULT_LEASE_SECONDS"))

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """``self.retry()`` from a body, published like the library's own retries.

        The retry message keeps the request's headers (replay origin, first-failed and
        first-started times: the policy's deadlines) and carries the claim's retry token. A
        publish the broker refuses parks the message in the outbox (Celery's own retry would
        reject the delivery and lose the work). Past ``max_retries`` the exception Celery
        raises is marked "exhausted" (not "gave up"). Without an explicit ``max_retries`` it is
        held to the task's cap: Celery's own for a task that keeps Celery's retries
        (``max_retries=None`` bounded), else the policy's.
        """
        if len(args) < 7 and kwargs.get("max_retries") is None:
            # Celery's cap is the task's max_retries; a task whose policy caps otherwise (or
            # that Celery would retry forever) is held to its policy's cap.
            cap = self._retry_cap()
            if cap != self.max_retries:
                kwargs["max_retries"] = cap
        kwargs["headers"] = _body_retry_headers(self.request, kwargs.get("headers"))
        # Eager or called directly there is no broker: Celery raises or runs the retry itself.
        on_broker = not (self.request.is_eager or self.request.called_directly)
        throw = True
        if on_broker:
            throw, args, kwargs = _without_throw(args, kwargs)
        try:
            # Celery builds the retry message (arguments, countdown, max_retries) but does not
            # send it: publishing.send_or_keep does, so a refused publish is parked, not lost.
            with _unsent(self.request) if on_broker else nullcontext():
                planned = super().retry(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            setattr(exc, _CAP_REACHED, True)
            raise
        if not on_broker:
            return planned
        sig = cast(Any, planned).sig  # celery-types does not declare Retry.sig
        publishing.send_or_keep(sig, task=self, reason="retry")
        retry = Retry(exc=planned.exc, when=planned.when, sig=sig)
        if throw:
            raise retry
        return retry

    def _worker_name(self) -> str:
        return self.request.hostname or socket.gethostname()

    def _ticket_for(self, key: ClaimKey, attempts: int) -> Ticket:
        """A ticket for a claim we no longer hold one for, to close it as its owner."""
        assert self.request.id is not None  # inside a task run Celery always sets it
        return Ticket(
            key,
            self.request.id,
            self._worker_name(),
            max(attempts, 1),
            self.hygiene_lease_seconds(),
            claims.write_alias(),
        )

    # -- plain tasks (no claim) ----------------------------------------------------------

    def _call_plain(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        lost = redeliveries.count(self.request, self.name)
        attempt = self.request.retries + 1 + lost
        # Only lost deliveries make a message give up unrun: retries past the cap come from a
        # body's own self.retry(max_retries=...), which Celery honours.
        if lost and attempt > self.hygiene_policy().max_attempts:
            return self._give_up_lost(attempt, ticket=None, key=None)
        try:
            return self._body()(*args, **kwargs)
        except _CONTROL_FLOW:
            raise
        except Exception as exc:
            self._on_body_failure(exc, attempt=attempt, ticket=None, key=None)
            raise

    # -- idempotent tasks ----------------------------------------------------------------

    def _call_idempotent(
        self, spec: IdempotencySpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        key = self._claim_key(spec, args, kwargs)
        if spec.atomic:
            return self._call_atomic(key, args, kwargs)
        try:
            claim = self._acquire(key, using=claims.write_alias())
        except DB_ERRORS as exc:
            return self._claim_unavailable(exc, key)
        if claim.outcome is not Outcome.ACQUIRED:
            return self._not_acquired(spec, key, claim)
        ticket = claim.ticket
        assert ticket is not None
        if ticket.attempts > self.hygiene_policy().max_attempts:
            return self._give_up_lost(ticket.attempts, ticket=ticket, key=key)
        self.request.hygiene_ticket = ticket  # type: ignore[attr-defined]  # ours, on the Context
        try:
            value = self._body()(*args, **kwargs)
        except Retry as retry:
            self._release(ticket, countdown=_retry_delay(retry), error=repr(retry.exc))
            raise
        except NotFinished as not_finished:
            return self._not_finished(ticket, not_finished)
        except Ignore:
            # The body handed its work on (``self.replace()``) or chose to stop: it ran, and a
            # later duplicate must not run it again.
            self._complete(ticket, None)
            raise
        except Reject:
            self._release(ticket, countdown=0.0, error="rejected by the task")
            raise
        except Exception as exc:
            self._on_body_failure(exc, attempt=ticket.attempts, ticket=ticket, key=key)
            raise
        self._complete(ticket, value)
        return value

    def _call_atomic(self, key: ClaimKey, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Claim, body and completion in one transaction: DB effects happen exactly once.

        A crash rolls the claim back with the body, so deliveries that died are counted outside
        the transaction (the redelivery ledger), or a message that kills its worker would loop.
        """
        using = claims.write_alias()
        ticket: Ticket | None = None
        lost_before = redeliveries.count(self.request, self.name)
        try:
            # Opening the transaction connects: a database that is down fails here, before
            # the claim, and is the claim's problem, not the body's.
            with _entered_at_claim_time(transaction.atomic(using=using)):
                with _claim_time():
                    claim = self._acquire(key, using=using)
                if claim.outcome is Outcome.ACQUIRED:
                    ticket = claim.ticket
                    assert ticket is not None
                    if ticket.attempts + lost_before > self.hygiene_policy().max_attempts:
                        raise _GiveUpLost(ticket.attempts + lost_before)
                    self.request.hygiene_ticket = ticket  # type: ignore[attr-defined]
                    try:
                        value = self._body()(*args, **kwargs)
                    except NotFinished as not_finished:
                        # The body's own writes commit; the claim does not.
                        return self._not_finished(ticket, not_finished)
                    except Ignore:
                        value = None  # handed on (self.replace()): the body ran
                        claims.complete(ticket, None)
                        raise
                    claims.complete(ticket, self._serialize_result(value))
                    return value
        except _ClaimUnavailable as unavailable:
            return self._claim_unavailable(unavailable.error, key)
        except _GiveUpLost as lost:
            return self._give_up_lost(lost.attempts, ticket=None, key=key)
        except Retry as retry:
            if ticket is not None:
                self._release(ticket, countdown=_retry_delay(retry), error=repr(retry.exc))
            raise
        except (Ignore, Reject):
            raise
        except Exception as exc:
            attempt = (ticket.attempts if ticket else 1) + lost_before
            self._on_body_failure(exc, attempt=attempt, ticket=ticket, key=key)
            raise
        assert self.hygiene_idempotency is not None
        return self._not_acquired(self.hygiene_idempotency, key, claim)

    def _claim_unavailable(self, error: BaseException, key: ClaimKey) -> None:
        """The database could not be asked who owns the key: come back later, body not run.

        This is not an attempt of the body: it has its own budget (``CLAIM_RETRY_SECONDS``,
        minutes, enough for a restart or a failover) and ignores the policy's ``retry_on``.
        """
        now = time.time()
        since = float(_header(self.request, CLAIM_WAIT_HEADER) or now)
        waited = now - since
        if waited > float(conf.get("CLAIM_RETRY_SECONDS")):
            self._dead_letter(
                error,
                reason=DeadLetterReason.GAVE_UP,
                attempts=self.request.retries + 1,
                ticket=None,
                key=key,
            )
            raise error
        tries = int(_header(self.request, CLAIM_TRIES_HEADER) or 0) + 1
        countdown = min(float(conf.get("CLAIM_RETRY_MAX_DELAY")), 0.5 * 2**tries)
        countdown += random.uniform(0, countdown / 2)
        self._log_claim(
            logging.WARNING,
            "task_claim_unavailable",
            key,
            waited=round(waited, 1),
            retry_in=round(countdown, 2),
            error=repr(error),
        )
        headers = _carried_headers(self.request)
        headers[CLAIM_WAIT_HEADER] = since
        headers[CLAIM_TRIES_HEADER] = tries
        self._follow_up(countdown, headers, reason="claim_unavailable")
        raise Ignore()

    def _follow_up(self, countdown: float, headers: dict[str, Any], *, reason: str) -> None:
        """Re-send this message (same id and retry count) later, without losing it."""
        sig = self.signature_from_request(
            self.request,
            countdown=countdown,
            retries=self.request.retries,
            headers=headers,
            # An absolute expiry was for the original delivery, which we accepted; a copy that
            # expires while waiting would leave the work undone.
            expires=None,
        )
        publishing.send_or_keep(sig, task=self, reason=reason)

    def _claim_key(
        self, spec: IdempotencySpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> ClaimKey:
        arguments = spec.bind_arguments(self.name, args, kwargs)
        return ClaimKey(
            entity=spec.entity_key(self.name, arguments),
            operation=spec.operation_name(self.name),
            task_name=self.name,
            fingerprint=spec.fingerprint(arguments),
        )

    def _acquire(self, key: ClaimKey, *, using: str) -> ClaimResult:
        assert self.request.id is not None  # inside a task run Celery always sets it
        token = _header(self.request, RETRY_TOKEN_HEADER)
        spec = self.hygiene_idempotency
        singleton = bool(spec and spec.singleton)
        return claims.acquire(
            key,
            owner_task_id=self.request.id,
            owner_worker=self._worker_name(),
            lease_seconds=self.hygiene_lease_seconds(),
            using=using,
            retry_token=int(token) if token is not None else None,
            reclaim_after=0.0 if singleton else (spec.window if spec else None),
            reclaim_dead=singleton,
            any_fingerprint=singleton,
        )

    def _not_finished(self, ticket: Ticket, reason: NotFinished) -> None:
        """The body ended on purpose without success: free the key for the next message."""
        if connections[ticket.using].in_atomic_block:
            claims.forget(ticket)  # part of the atomic body's transaction: retrying it is moot
        else:
            with_db_retries(lambda: claims.forget(ticket), event="claim_release_retry")
        self._log_claim(
            logging.INFO,
            "task_not_finished",
            ticket.key,
            detail=str(reason) or None,
        )
        return None

    def _not_acquired(self, spec: IdempotencySpec, key: ClaimKey, claim: ClaimResult) -> Any:
        existing = claim.existing
        if spec.singleton:
            if not spec.wait:
                return self._singleton_busy(key)
            self._defer(key, claim.wait_seconds)
        if existing is not None and existing.fingerprint != key.fingerprint:
            self._mismatch(spec, key, existing)
            return None
        if claim.outcome is Outcome.IN_PROGRESS:
            self._defer(key, claim.wait_seconds)
        assert existing is not None
        self._duplicate(key, existing)
        if claim.outcome is Outcome.SUCCEEDED:
            return _load_result(existing.result_json)
        return None

    def _log_claim(self, level: int, event: str, key: ClaimKey, **fields: Any) -> None:
        """One log line about this message and its claim key."""
        log_event(
            level,
            event,
            task=self.name,
            id=self.request.id,
            entity=key.entity,
            operation=key.operation,
            **fields,
        )

    def _singleton_busy(self, key: ClaimKey) -> None:
        self._announce(
            logging.INFO,
            "task_singleton_busy",
            signals.task_singleton_busy,
            key,
            log_fields={},
            signal_kwargs={},
        )
        return None

    def _duplicate(self, key: ClaimKey, existing: TaskClaim) -> None:
        self._announce(
            logging.INFO,
            "task_duplicate",
            signals.task_duplicate,
            key,
            log_fields={"status": existing.status, "first_id": existing.owner_task_id},
            signal_kwargs={"status": existing.status},
        )

    def _mismatch(self, spec: IdempotencySpec, key: ClaimKey, existing: TaskClaim) -> None:
        self._announce(
            logging.WARNING,
            "task_claim_mismatch",
            signals.task_claim_mismatch,
            key,
            log_fields={"first_id": existing.owner_task_id},
            signal_kwargs={
                "existing_fingerprint": existing.fingerprint,
                "fingerprint": key.fingerprint,
            },
        )
        if spec.on_mismatch == "raise":
            raise IdempotencyConflict(
                f"{self.name}: ({key.entity!r}, {key.operation!r}) was already claimed by task "
                f"{existing.owner_task_id} with different arguments; this message was not run."
            )

    def _announce(
        self,
        level: int,
        event: str,
        signal: Any,
        key: ClaimKey,
        *,
        log_fields: dict[str, Any],
        signal_kwargs: dict[str, Any],
    ) -> None:
        """One structured log line and one signal about this message and its claim."""
        where = {"entity": key.entity, "operation": key.operation}
        log_event(level, event, task=self.name, id=self.request.id, **where, **log_fields)
        _send_safely(signal, sender=self, task_id=self.request.id, **where, **signal_kwargs)

    def _defer(self, key: ClaimKey, wait_seconds: float) -> None:
        """Someone holds a live lease: look again later instead of running or dropping the work.

        The first look comes after half a second, each next one twice as late, capped by the
        holder's lease and ``DEFER_MAX_SECONDS``: a duplicate of a body that is about to finish
        (or whose completion is in the worker's next batch) is answered at once, one of an
        hour-long body does not poll the broker every second. Re-published with the same id and
        retry count (this is not a failed attempt), then the current delivery is acknowledged
        via Ignore. Never sleeps in the worker.
        """
        # The claim was read: whatever outage this message waited out is over.
        headers = _carried_headers(self.request, drop=_CLAIM_WAIT_HEADERS)
        defers = int(_header(self.request, DEFERS_HEADER) or 0)
        backoff = FIRST_DEFER_SECONDS * 2 ** min(defers, 16)
        countdown = min(float(conf.get("DEFER_MAX_SECONDS")), wait_seconds, backoff)
        countdown = max(FIRST_DEFER_SECONDS, countdown) + random.uniform(0, 0.5)
        self._log_claim(
            logging.INFO,
            "task_claim_busy",
            key,
            retry_in=round(countdown, 2),
        )
        headers[DEFERS_HEADER] = defers + 1
        self._follow_up(countdown, headers, reason="defer")
        raise Ignore()

    def _complete(self, ticket: Ticket, value: Any) -> None:
        try:
            result_json = self._serialize_result(value)
        except ResultNotStorable as exc:
            # The body has run and its effects are out in the world: the claim must say so,
            # or a duplicate would run it again. The task still fails loudly.
            claims.complete(ticket, None)
            log_event(logging.ERROR, "task_result_not_storable", task=self.name, id=self.request.id)
            raise exc from None
        if not self.request.is_eager and amortized.hand_over(self, ticket, result_json):
            return  # the worker's main process records it with its next batch
        try:
            completed = with_db_retries(
                lambda: claims.complete(ticket, result_json), event="claim_complete_retry"
            )
        except Exception as exc:
            # The body ran and its result is returned; only the record of it is missing. The
            # claim keeps its lease, so a duplicate can at worst run the body again after it.
            self._log_claim(
                logging.ERROR,
                "claim_complete_failed",
                ticket.key,
                error=repr(exc),
            )
            return
        if not completed:
            self._log_claim(
                logging.WARNING,
                "task_claim_lost",
                ticket.key,
                detail="lease expired and was taken over before completion",
            )

    def _serialize_result(self, value: Any) -> str:
        try:
            return kombu_dumps(value)
        except (TypeError, ValueError) as exc:
            raise ResultNotStorable(
                f"{self.name}: the return value {type(value).__name__} cannot be stored as the "
                f"claim's result ({exc}). Return JSON-serializable data (ids, not objects)."
            ) from exc

    def _release(self, ticket: Ticket, *, countdown: float, error: str) -> None:
        try:
            claims.release_for_retry(ticket, countdown=countdown, error=error)
        except Exception as exc:  # the retry still happens; it waits out the lease instead
            log_event(logging.WARNING, "claim_release_failed", task=self.name, error=repr(exc))

    # -- failures: retry or dead-letter --------------------------------------------------

    def _on_body_failure(
        self, exc: Exception, *, attempt: int, ticket: Ticket | None, key: ClaimKey | None
    ) -> None:
        """Schedule a retry (raises Retry) or store a dead letter (returns; caller re-raises)."""
        if isinstance(exc, ResultNotStorable):
            if not self._is_atomic():
                return  # the body ran and the claim says so; nothing to retry or replay
            decision = Decision(retry=False, reason=DeadLetterReason.GAVE_UP)
        elif getattr(exc, _CAP_REACHED, False):
            decision = Decision(retry=False, reason=DeadLetterReason.EXHAUSTED)
        else:
            decision = self.hygiene_policy().decide(
                attempt=attempt, exc=exc, elapsed=self._elapsed()
            )
        if decision.retry:
            self._schedule_retry(exc, decision, attempt, ticket)
        reason = DeadLetterReason.TIMEOUT if isinstance(exc, _TIME_LIMITS) else decision.reason
        self._dead_letter(exc, reason=reason, attempts=attempt, ticket=ticket, key=key)

    def _is_atomic(self) -> bool:
        return bool(self.hygiene_idempotency and self.hygiene_idempotency.atomic)

    def _elapsed(self) -> float:
        started = _header(self.request, FIRST_STARTED_HEADER)
        return max(0.0, time.time() - float(started)) if started else 0.0

    def _schedule_retry(
        self, exc: Exception, decision: Decision, attempt: int, ticket: Ticket | None
    ) -> None:
        countdown = decision.countdown
        _warn_visibility_timeout(self, countdown)
        headers = _attempt_headers(self.request)
        if ticket is not None:
            self._release(ticket, countdown=countdown, error=repr(exc))
            headers[RETRY_TOKEN_HEADER] = ticket.attempts
        log_event(
            logging.WARNING,
            "task_retry_scheduled",
            task=self.name,
            id=self.request.id,
            attempt=attempt,
            max_attempts=self.hygiene_policy().max_attempts,
            countdown=round(countdown, 3),
            exc=type(exc).__name__,
        )
        _send_safely(
            signals.task_retry_scheduled,
            sender=self,
            task_id=self.request.id,
            attempt=attempt,
            countdown=countdown,
            exception=exc,
        )
        # Published here rather than by Task.retry(), which turns a failed publish into
        # Reject(requeue=False): the work would be gone.
        sig = self.signature_from_request(
            self.request,
            countdown=countdown,
            retries=self.request.retries + 1,
            headers=headers,
            expires=None,
        )
        publishing.send_or_keep(sig, task=self, reason="retry")
        # celery-types types `when` as numbers.Real, which mypy never matches with float.
        raise Retry(exc=exc, when=countdown, sig=sig)  # type: ignore[arg-type]

    def _give_up_lost(self, attempts: int, *, ticket: Ticket | None, key: ClaimKey | None) -> None:
        """The message came back more times than the policy allows: it keeps killing workers."""
        from billiard.exceptions import WorkerLostError

        max_attempts = self.hygiene_policy().max_attempts
        exc = WorkerLostError(
            f"{self.name}[{self.request.id}] was not run again on delivery {attempts}: its "
            f"max_attempts={max_attempts} runs are used up and the worker running it was lost "
            "each time (killed, out of memory, crashed)."
        )
        self._dead_letter(
            exc, reason=DeadLetterReason.WORKER_LOST, attempts=attempts, ticket=ticket, key=key
        )
        return None

    def _dead_letter(
        self,
        exc: BaseException,
        *,
        reason: str,
        attempts: int,
        ticket: Ticket | None,
        key: ClaimKey | None,
    ) -> None:
        """Store the dead letter; never raises into Celery, except Reject if nothing was stored."""
        failed = self._failed_task(exc, reason=reason, attempts=attempts, key=key)
        if ticket is None and key is not None:
            ticket = self._ticket_for(key, attempts)  # atomic mode rolled ours back
        close_claim = _closer(ticket, repr(exc)) if ticket else None
        try:
            dead_letter = deadletters.store(failed, also=close_claim)
        except deadletters.ClaimMovedOn:
            # Another delivery finished the work (or owns it now): this failure is not the
            # task's fate, and a dead letter would invite a replay of done work.
            log_event(
                logging.INFO,
                "task_failure_after_claim_moved_on",
                task=self.name,
                id=self.request.id,
                entity=failed.entity,
                exc=type(exc).__name__,
            )
            return
        except Exception as error:
            deadletters.log_unstorable(failed, error)
            raise self._keep_undead_letter(error) from error
        log_event(
            logging.ERROR, "task_dead_lettered", **failed.log_fields(), dead_letter=dead_letter.pk
        )
        _send_safely(
            signals.task_dead_lettered,
            sender=self,
            task_id=self.request.id,
            dead_letter=dead_letter,
            exception=exc,
        )

    def _keep_undead_letter(self, error: Exception) -> Reject:
        """The database cannot take the dead letter: leave the message with the broker.

        ``requeue`` (default) works on every broker but redelivers at once; ``reject`` hands it
        to a RabbitMQ dead-letter exchange (without one, RabbitMQ drops it; Redis has none).
        Either way only an unacknowledged delivery (``acks_late``) can be kept: without it the
        log line written before is the only copy.
        """
        requeue = str(conf.get("DEADLETTER_FALLBACK")) != "reject"
        if requeue:
            time.sleep(min(5.0, float(conf.get("DB_RETRY_MAX_WAIT"))))  # no hot redelivery loop
        return Reject(error, requeue=requeue)

    def _failed_task(
        self, exc: BaseException, *, reason: str, attempts: int, key: ClaimKey | None
    ) -> deadletters.FailedTask:
        request = self.request
        delivery = request.delivery_info or {}
        now = timezone.now()
        first = _header(request, FIRST_FAILED_HEADER)
        return deadletters.FailedTask(
            task_name=self.name,
            task_id=request.id or "",  # no request in the parent: dead_letter_from_parent sets it
            args=request.args if request.args is not None else [],
            kwargs=request.kwargs if request.kwargs is not None else {},
            exception=exc,
            reason=reason,
            attempts=attempts,
            first_failed_at=_from_epoch(first) if first else now,
            last_failed_at=now,
            queue=_queue_name(delivery),
            exchange=delivery.get("exchange") or "",
            routing_key=delivery.get("routing_key") or "",
            priority=delivery.get("priority"),
            headers=_replay_headers(request),
            entity=key.entity if key else "",
            operation=key.operation if key else "",
            worker_hostname=self._worker_name(),
        )

    # -- failures reported in the worker's main process --------------------------------

    def dead_letter_from_parent(
        self, task_id: str, exc: BaseException, args: Any, kwargs: Any
    ) -> None:
        """Dead-letter a run that the pool lost (hard time limit, lost worker without requeue).

        Runs in the worker's main process: ``self.request`` carries the message's context only
        when Celery pushed it (worker lost); after a hard timeout we rebuild what we can. The
        claim is closed in the dead letter's transaction, fenced on this task id: if the work
        was finished or taken over meanwhile, nothing is written.
        """
        request = self.request if self.request.id == task_id else None
        reason = (
            DeadLetterReason.TIMEOUT
            if isinstance(exc, TimeLimitExceeded)
            else DeadLetterReason.WORKER_LOST
        )
        if isinstance(exc, TimeLimitExceeded) and exc.args and isinstance(exc.args[0], int | float):
            # Same type (filters still match), words an operator can read at 3 a.m.
            exc = TimeLimitExceeded(
                f"hard time limit of {exc.args[0]:g} s exceeded: the pool killed the process "
                f"running {self.name}[{task_id}]"
            )
        key = self.claim_key_or_none(args or (), kwargs or {})
        failed = self._failed_task(
            exc,
            reason=reason,
            attempts=(request.retries + 1) if request is not None else 1,
            key=key,
        )
        failed.task_id = task_id
        failed.args = list(args or ())
        failed.kwargs = dict(kwargs or {})
        if request is None:
            failed.queue = failed.routing_key = _default_queue(self)
        worker = upkeep.hostname()  # this main process's node name, as its pool writes it
        close = _owner_closer(key, task_id, repr(exc), worker) if key is not None else None
        try:
            dead_letter = deadletters.store(failed, also=close)
        except deadletters.ClaimMovedOn as moved:
            log_event(
                logging.INFO,
                "task_lost_after_claim_moved_on",
                task=self.name,
                id=task_id,
                entity=key.entity if key else None,
                detail=str(moved),
                exc=type(exc).__name__,
            )
            return
        except Exception as error:
            deadletters.log_unstorable(failed, error)
            return
        log_event(
            logging.ERROR, "task_dead_lettered", **failed.log_fields(), dead_letter=dead_letter.pk
        )
        _send_safely(
            signals.task_dead_lettered,
            sender=self,
            task_id=task_id,
            dead_letter=dead_letter,
            exception=exc,
        )

    def release_lost_lease(self, task_id: str, args: Any, kwargs: Any, worker: str) -> None:
        """The process running this body died and Celery requeued the message: free the claim
        now, so the redelivery takes it over at once instead of after the lease."""
        key = self.claim_key_or_none(args or (), kwargs or {})
        if key is None:
            return
        with_db_retries(
            lambda: claims.expire_lease(
                key.entity, key.operation, owner_task_id=task_id, worker=worker
            ),
            event="lease_release_retry",
        )

    def claim_key_or_none(self, args: Any, kwargs: Any) -> ClaimKey | None:
        """The claim key of a message, or None (no claim, or arguments that do not bind)."""
        spec = self.hygiene_idempotency
        if spec is None:
            return None
        try:
            return self._claim_key(spec, tuple(args), dict(kwargs))
        except Exception:
            return None

    # -- eager mode (users' unit tests) --------------------------------------------------

    def _call_eager(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Eager mode has no broker to retry through or redeliver from.

        Claims are still enforced against the database, so a user's test that sends a task
        twice sees one run and the stored result; a failure releases the claim and propagates
        like a plain eager task, without retries or dead letters.
        """
        spec = self.hygiene_idempotency
        if spec is None:
            return self.run(*args, **kwargs)
        key = self._claim_key(spec, args, kwargs)
        using = claims.write_alias()
        with transaction.atomic(using=using) if spec.atomic else nullcontext():
            claim = self._acquire(key, using=using)
            if claim.outcome is Outcome.ACQUIRED:
                ticket = claim.ticket
                assert ticket is not None
                try:
                    value = self.run(*args, **kwargs)
                except NotFinished as not_finished:
                    return self._not_finished(ticket, not_finished)
                except BaseException:
                    if not spec.atomic:
                        # No retry will come in eager mode: the key is free again at once, so
                        # the developer's next call (after a fix) runs the body.
                        _eager_release(ticket)
                    raise
                self._complete(ticket, value)
                return value
        if spec.singleton and not spec.wait:
            return self._singleton_busy(key)
        if claim.existing is not None and claim.existing.fingerprint != key.fingerprint:
            self._mismatch(spec, key, claim.existing)
            return None
        if claim.outcome is Outcome.IN_PROGRESS:
            raise ClaimBusy(
                f"{self.name}: ({key.entity!r}, {key.operation!r}) is claimed by "
                f"{claim.existing.owner_task_id if claim.existing else 'another run'} and eager "
                "mode cannot wait for it. Clear claims between tests "
                "(celery_hygiene.testing.clear_claims)."
            )
        assert claim.existing is not None
        self._duplicate(key, claim.existing)
        return (
            _load_result(claim.existing.result_json) if claim.outcome is Outcome.SUCCEEDED else None
        )


def default_policy() -> RetryPolicy:
    """``CELERY_HYGIENE["DEFAULT_RETRY_POLICY"]``, else ``RetryPolicy(max_attempts=5)``."""
    configured = conf.get("DEFAULT_RETRY_POLICY")
    return DEFAULT_POLICY if configured is None else coerce_policy(configured)


def _owner_closer(key: ClaimKey, task_id: str, error: str, worker: str | None) -> Any:
    """For the main process: mark this task id's claim dead, or refuse if it moved on."""

    def close() -> dict[str, Any] | None:
        attempts = claims.mark_dead_for_owner(
            key.entity, key.operation, owner_task_id=task_id, error=error, worker=worker
        )
        if attempts:
            return {"attempts": attempts}
        current = (
            TaskClaim.objects.using(claims.write_alias())
            .filter(entity=key.entity, operation=key.operation)
            .values_list("status", "owner_task_id")
            .first()
        )
        if current is not None:  # finished, or owned by another delivery now
            raise deadletters.ClaimMovedOn(f"claim is {current[0]}, owned by {current[1]}")
        return None  # no row at all (an atomic claim rolled back): the dead letter stands alone

    return close


def _eager_release(ticket: Ticket) -> None:
    try:
        claims.forget(ticket)
    except Exception as exc:  # noqa: BLE001 - the body's error matters more
        log_event(
            logging.WARNING, "claim_release_failed", task=ticket.key.task_name, error=repr(exc)
        )


def _closer(ticket: Ticket, error: str) -> Any:
    """Mark the claim dead with the dead letter; roll both back if the claim is not ours."""

    def close() -> None:
        if not claims.mark_dead(ticket, error=error):
            raise deadletters.ClaimMovedOn(ticket.key.entity)

    return close


@contextmanager
def _claim_time() -> Iterator[None]:
    """A database error here, before the body runs, means "claim unavailable", not a failure."""
    try:
        yield
    except DB_ERRORS as exc:
        raise _ClaimUnavailable(exc) from exc


class _entered_at_claim_time:  # noqa: N801 - used like a function, as contextlib's helpers are
    """Wrap a context manager whose *entering* counts as claim time (opening a transaction
    connects); errors inside the block are left alone."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __enter__(self) -> Any:
        with _claim_time():
            return self.inner.__enter__()

    def __exit__(self, *exc_info: Any) -> Any:
        return self.inner.__exit__(*exc_info)


class _ClaimUnavailable(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class _GiveUpLost(Exception):
    def __init__(self, attempts: int) -> None:
        super().__init__(attempts)
        self.attempts = attempts


def _load_result(result_json: str | None) -> Any:
    return None if result_json is None else kombu_loads(result_json)


def _retry_delay(retry: Retry) -> float:
    when = retry.when
    if when is None:
        return 0.0
    if isinstance(when, numbers.Real):
        return float(when)
    return max(0.0, (when - timezone.now()).total_seconds())


def _carried_headers(request: Any, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's own headers, for a follow-up of this message (minus those in ``drop``)."""
    headers = dict(request.headers or {})
    for name in (*_NOT_CARRIED, *drop):
        headers.pop(name, None)
    return headers


def _attempt_headers(request: Any) -> dict[str, Any]:
    """Headers for the next attempt of a body that ran: its deadlines, none of its waits."""
    now = time.time()
    headers = _carried_headers(request, drop=_ATTEMPT_WAIT_HEADERS)
    headers[FIRST_FAILED_HEADER] = _header(request, FIRST_FAILED_HEADER) or now
    headers[FIRST_STARTED_HEADER] = _header(request, FIRST_STARTED_HEADER) or now
    return headers


def _body_retry_headers(request: Any, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """A body's ``self.retry(headers=...)``: the caller's headers over the carried ones."""
    headers = {**_attempt_headers(request), **(given or {})}
    ticket = getattr(request, "hygiene_ticket", None)
    if ticket is not None:
        headers[RETRY_TOKEN_HEADER] = ticket.attempts
    return headers


def _without_throw(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, tuple[Any, ...], dict[str, Any]]:
    """Celery's ``retry(args, kwargs, exc, throw, ...)``: take ``throw`` out, ask for False."""
    if len(args) > 3:
        return bool(args[3]), (*args[:3], False, *args[4:]), kwargs
    throw = bool(kwargs.pop("throw", True))
    return throw, args, {**kwargs, "throw": False}


@contextmanager
def _unsent(request: Any) -> Iterator[None]:
    """Inside, Celery's ``Task.retry`` returns its planned Retry without publishing it.

    Celery skips the publish for an eager request and hands back the Retry with its message
    (``Retry.sig``); nothing else in ``Task.retry`` reads the flag.
    """
    was_eager = request.is_eager
    request.is_eager = True
    try:
        yield
    finally:
        request.is_eager = was_eager


def _header(request: Any, name: str) -> Any:
    headers = request.headers or {}
    return headers.get(name, getattr(request, name, None))


def _from_epoch(value: Any) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)


def _queue_name(delivery: Mapping[str, Any]) -> str:
    # RabbitMQ's delivery_info has no queue name: with the default direct routing the routing
    # key is the queue name, which is what Celery itself assumes when it retries.
    return delivery.get("queue") or delivery.get("routing_key") or ""


def _replay_headers(request: Any) -> dict[str, Any]:
    headers = {
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "group_id": request.group,
        "retries": request.retries,
    }
    replay_of = _header(request, deadletters.REPLAY_OF_HEADER)
    if replay_of is not None:
        headers[deadletters.REPLAY_OF_HEADER] = replay_of
    return {k: v for k, v in headers.items() if v is not None}


def _default_queue(task: Task[Any, Any]) -> str:
    """Where this task is routed by configuration (the message itself is gone)."""
    try:
        route = task.app.amqp.router.route({}, task.name, (), {})
        queue = route.get("queue")
        return getattr(queue, "name", None) or str(queue or "")
    except Exception:
        return task.app.conf.task_default_queue or ""


def _warn_visibility_timeout(task: Task[Any, Any], countdown: float) -> None:
    """On Redis/SQS a countdown past the visibility timeout makes the broker redeliver early."""
    conf_ = task.app.conf
    url = str(conf_.broker_url or "")
    if not url.startswith(("redis", "rediss", "sqs")):
        return
    timeout = (conf_.broker_transport_options or {}).get("visibility_timeout", 3600)
    if countdown > float(timeout):
        log_event(
            logging.WARNING,
            "retry_exceeds_visibility_timeout",
            task=task.name,
            countdown=round(countdown, 1),
            visibility_timeout=timeout,
            hint="raise broker_transport_options['visibility_timeout'] or lower max_delay",
        )


def _send_safely(signal: Any, **kwargs: Any) -> None:
    """Receivers are user code: their errors are logged, never raised into Celery's handlers."""
    for receiver, response in signal.send_robust(**kwargs):
        if isinstance(response, Exception):
            log_event(
                logging.ERROR,
                "signal_receiver_failed",
                receiver=getattr(receiver, "__qualname__", receiver),
                error=repr(response),
            )
