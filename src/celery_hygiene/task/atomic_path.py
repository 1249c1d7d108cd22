"""The atomic path: claim, body and completion in one transaction, so the body's database
effects happen exactly once (``idempotent_task(atomic=True)``).

A crash rolls the claim back with the body, so deliveries that died are counted outside the
transaction (the redelivery ledger), or a message that kills its worker would loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore, Reject, Retry
from django.db import transaction

from celery_hygiene.claims import redeliveries
from celery_hygiene.claims import state as claims
from celery_hygiene.claims.dbretry import DB_ERRORS
from celery_hygiene.claims.spec import IdempotencySpec
from celery_hygiene.claims.state import ClaimKey, Outcome, Ticket
from celery_hygiene.exceptions import NotFinished
from celery_hygiene.task import claim_path, claiming, failure, follow_up
from celery_hygiene.task.headers import retry_delay

if TYPE_CHECKING:
    from celery_hygiene.task.hygiene_task import HygieneTask

    AnyTask = HygieneTask[Any, Any]


def run(
    task: AnyTask,
    spec: IdempotencySpec,
    key: ClaimKey,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    using = claims.write_alias()
    ticket: Ticket | None = None
    lost_before = redeliveries.count(task.request, task.name)
    try:
        # Opening the transaction connects: a database that is down fails here, before
        # the claim, and is the claim's problem, not the body's.
        with _entered_at_claim_time(transaction.atomic(using=using)):
            with _claim_time():
                claim = claiming.acquire(task, key, using=using)
            if claim.outcome is Outcome.ACQUIRED:
                ticket = claim.ticket
                assert ticket is not None
                if ticket.attempts + lost_before > task.hygiene_policy().max_attempts:
                    raise _GiveUpLost(ticket.attempts + lost_before)
                task.request.hygiene_ticket = ticket  # type: ignore[attr-defined]
                try:
                    value = task._body()(*args, **kwargs)
                except NotFinished as not_finished:
                    # The body's own writes commit; the claim does not.
                    return claiming.not_finished(task, ticket, not_finished)
                except Ignore:
                    value = None  # handed on (self.replace()): the body ran
                    claims.complete(ticket, None)
                    raise
                claims.complete(ticket, claiming.serialize_result(task, value))
                return value
    except _ClaimUnavailable as unavailable:
        return follow_up.claim_unavailable(task, unavailable.error, key)
    except _GiveUpLost as lost:
        return failure.give_up_lost(task, lost.attempts, ticket=None, key=key)
    except Retry as retry:
        if ticket is not None:
            claiming.release(ticket, retry_in=retry_delay(retry), error=repr(retry.exc))
        raise
    except (Ignore, Reject):
        raise
    except Exception as exc:
        attempt = (ticket.attempts if ticket else 1) + lost_before
        failure.on_body_failure(task, exc, attempt=attempt, ticket=ticket, key=key)
        raise
    return claim_path.not_acquired(task, spec, key, claim)


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
