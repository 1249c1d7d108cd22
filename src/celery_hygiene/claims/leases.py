"""The lease side of a claim: the heartbeat that keeps a running body's claim (:func:`renew`),
ending a lease whose process died (:func:`expire_lease`), and the claims nobody renews any more
(:func:`stale_claims`). The worker's main process drives the heartbeat (``worker/leases.py``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from celery_hygiene.claims.sql import RENEW_SQL_POSTGRES, execute, write_alias
from celery_hygiene.models import ClaimStatus, TaskClaim


@dataclass(frozen=True)
class Held:
    """A claim the worker's main process believes one of its pool processes is running."""

    entity: str
    operation: str
    owner_task_id: str
    lease_seconds: float


def renew(held: list[Held], *, worker: str, using: str | None = None) -> int:
    """Push the leases of running claims forward (the heartbeat). Returns rows renewed."""
    if not held:
        return 0
    using = using or write_alias()
    connection = connections[using]
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(TaskClaim._meta.db_table)
        params: dict[str, Any] = {
            "entities": [h.entity for h in held],
            "operations": [h.operation for h in held],
            "owners": [h.owner_task_id for h in held],
            "leases": [float(h.lease_seconds) for h in held],
            "worker": worker,
        }
        _, rowcount = execute(using, RENEW_SQL_POSTGRES.format(table=table), params, fetch=False)
        return int(rowcount)
    renewed = 0  # other backends (SQLite in development): one UPDATE per claim
    for h in held:
        renewed += (
            TaskClaim.objects.using(using)
            .filter(
                entity=h.entity,
                operation=h.operation,
                owner_task_id=h.owner_task_id,
                owner_worker=worker,
                status=ClaimStatus.RUNNING,
            )
            .update(lease_expires_at=timezone.now() + dt.timedelta(seconds=h.lease_seconds))
        )
    return renewed


def expire_lease(
    entity: str, operation: str, *, owner_task_id: str, worker: str, using: str | None = None
) -> bool:
    """End a lease now: the worker saw the process running the body die, so nobody holds it.

    The redelivered message (or a duplicate) can then take the claim over at once instead of
    waiting out the lease. The attempt counter is untouched: the takeover bumps it.
    """
    using = using or write_alias()
    return bool(
        TaskClaim.objects.using(using)
        .filter(
            entity=entity,
            operation=operation,
            owner_task_id=owner_task_id,
            owner_worker=worker,
            status=ClaimStatus.RUNNING,
        )
        .update(lease_expires_at=Now())
    )


def stale_claims(*, expired_for: dt.timedelta, using: str | None = None) -> QuerySet[TaskClaim]:
    """Claims whose owner stopped renewing them long ago and that nobody has taken over.

    Such a row is work that started and never finished, with no message left to finish it
    (acknowledged early, then the worker died). The next duplicate would take it over; until
    then an operator should see it. No index serves it (an index on status or lease_expires_at
    would make every completion a non-HOT update, see models.py): a sequential scan, for a
    command an operator runs by hand.
    """
    using = using or write_alias()
    return (
        TaskClaim.objects.using(using)
        .filter(
            status__in=[ClaimStatus.RUNNING, ClaimStatus.RETRYING],
            lease_expires_at__lt=timezone.now() - expired_for,
        )
        .order_by("lease_expires_at")
    )
