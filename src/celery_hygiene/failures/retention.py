"""Retention: delete old claims in short batches, so a purge never holds long locks.

A claim row is what makes a later message a duplicate: once it is purged, a message for the same
``(entity, operation)`` runs the body again. Keep claims for longer than a duplicate can still
arrive (broker redeliveries, retries, dead-letter replays, a user's double submit), e.g. 30 days.

Only finished claims are ever purged: ``succeeded`` by default, ``dead`` on request. Claims with a
live lease (``running``, ``retrying``) are never touched. Each batch is one ``DELETE .. WHERE id IN
(SELECT id .. LIMIT n)`` in its own transaction, so row locks last one batch, and the scan uses
the ``created_at`` index (a claim is created before it completes).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable

from django.db import connections, router, transaction
from django.utils import timezone

from celery_hygiene.events import log_event
from celery_hygiene.models import ClaimStatus, DeadLetter, TaskClaim

PURGEABLE_STATUSES = (ClaimStatus.SUCCEEDED, ClaimStatus.DEAD)
DEFAULT_BATCH_SIZE = 5000


def purge_claims(
    *,
    older_than: dt.timedelta,
    batch_size: int = DEFAULT_BATCH_SIZE,
    statuses: Iterable[str] = (ClaimStatus.SUCCEEDED,),
    pause: float = 0.0,
    using: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete claims that finished more than ``older_than`` ago; return how many were deleted.

    - ``batch_size``: rows per DELETE (one short transaction each).
    - ``statuses``: which finished claims to delete; ``"dead"`` ones block duplicates until an
      operator replays the dead letter, so they are kept unless asked for.
    - ``pause``: seconds to sleep between batches, to leave room for the workers on a busy database.
    - ``on_batch``: called with the running total after each batch (progress output).
    """
    if not isinstance(older_than, dt.timedelta) or older_than < dt.timedelta(0):
        raise ValueError(
            f"purge_claims: older_than must be a non-negative timedelta, got {older_than!r}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"purge_claims: batch_size must be a positive integer, got {batch_size!r}."
        )
    statuses = tuple(statuses)
    unknown = [s for s in statuses if s not in PURGEABLE_STATUSES]
    if not statuses or unknown:
        raise ValueError(
            f"purge_claims: statuses must be a non-empty subset of "
            f"{[str(s) for s in PURGEABLE_STATUSES]}, got {list(statuses)!r}. Claims with a live "
            "lease (running, retrying) are never purged."
        )
    using = using or router.db_for_write(TaskClaim)
    cutoff = timezone.now() - older_than
    # created_at <= completed_at, so the created_at index finds every candidate; completed_at
    # decides. (Only never-updated columns are indexed: completions stay HOT updates.)
    old = TaskClaim.objects.using(using).filter(
        status__in=statuses, created_at__lt=cutoff, completed_at__lt=cutoff
    )
    total = batches = 0
    while True:
        # The conditions are repeated outside the subquery: a dead claim re-opened by a replay
        # between the subquery and the delete is re-checked by PostgreSQL and kept.
        batch_ids = old.order_by().values("pk")[:batch_size]
        deleted, _ = old.filter(pk__in=batch_ids).delete()
        total += deleted
        batches += 1
        if on_batch is not None:
            on_batch(total)
        if deleted < batch_size:
            break
        if pause:
            time.sleep(pause)
    log_event(
        logging.INFO,
        "claims_purged",
        deleted=total,
        batches=batches,
        cutoff=cutoff.isoformat(timespec="seconds"),
        statuses=",".join(statuses),
    )
    return total


def purge_dead_letters(
    *,
    older_than: dt.timedelta,
    statuses: Iterable[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    using: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete dead letters whose last failure is older than ``older_than``, in short batches.

    Dead letters link to each other (``replay_of``). Left to the ORM, that self-reference makes
    Django load every row (tracebacks included) to null the links one by one; at a million rows
    that is minutes. Each batch here is two statements in one short transaction: unlink the
    batch's replays, then delete the batch by primary key.
    """
    if not isinstance(older_than, dt.timedelta) or older_than <= dt.timedelta(0):
        raise ValueError(
            f"purge_dead_letters: older_than must be a positive timedelta, got {older_than!r}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"purge_dead_letters: batch_size must be a positive integer, got {batch_size!r}."
        )
    using = using or router.db_for_write(DeadLetter)
    cutoff = timezone.now() - older_than
    old = (
        DeadLetter.objects.using(using)
        .filter(status__in=list(statuses), last_failed_at__lt=cutoff)
        .order_by()
    )
    connection = connections[using]
    table = connection.ops.quote_name(DeadLetter._meta.db_table)
    total = 0
    while True:
        with transaction.atomic(using=using):
            batch = list(old.values_list("pk", flat=True)[:batch_size])
            if not batch:
                break
            ids = ", ".join(["%s"] * len(batch))
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {table} SET replay_of_id = NULL WHERE replay_of_id IN ({ids})", batch
                )
                cursor.execute(f"DELETE FROM {table} WHERE id IN ({ids})", batch)
                total += cursor.rowcount
        if on_batch is not None:
            on_batch(total)
    log_event(
        logging.INFO,
        "dead_letters_purged",
        deleted=total,
        cutoff=cutoff.isoformat(timespec="seconds"),
        statuses=",".join(map(str, statuses)),
    )
    return total
