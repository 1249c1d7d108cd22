"""Helpers for users' own test suites."""

from __future__ import annotations

from django.db import router

from celery_hygiene.models import DeadLetter, RedeliveryCount, TaskClaim


def clear_claims(*, operation: str | None = None, using: str | None = None) -> int:
    """Delete claims (all, or one operation's) so a test can run the same task again."""
    queryset = TaskClaim.objects.using(using or router.db_for_write(TaskClaim)).all()
    if operation is not None:
        queryset = queryset.filter(operation=operation)
    deleted, _ = queryset.delete()
    RedeliveryCount.objects.using(using or router.db_for_write(RedeliveryCount)).all().delete()
    return deleted


def clear_dead_letters(*, using: str | None = None) -> int:
    deleted, _ = DeadLetter.objects.using(using or router.db_for_write(DeadLetter)).all().delete()
    return deleted
