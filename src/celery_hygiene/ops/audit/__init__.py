"""The hygiene audit: Celery configuration the field knows to hurt, as Django check messages.

Each rule is one small function ``(Celery app) -> messages`` with its own id; ``audit`` runs them
all. Registered as a system check in ``ops/checks.py`` and run by ``manage.py taskhygiene check``.

=====================  ========================================================================
id                     what
=====================  ========================================================================
celery_hygiene.E001    ``CELERY_HYGIENE_QUEUES`` is invalid
celery_hygiene.E002    the Celery app named by ``CELERY_HYGIENE["CELERY_APP"]`` cannot be loaded
celery_hygiene.W002    no project tasks found in the Celery app (wrong app?)
celery_hygiene.W010    a task can retry forever
celery_hygiene.W011    ``acks_late`` on a task that is not idempotent (redelivery runs it twice)
celery_hygiene.W012    an idempotent or singleton task that a crash loses (no ``acks_late`` +
                       ``reject_on_worker_lost``)
celery_hygiene.W013    tasks that can fail without leaving a dead letter (not ``HygieneTask``)
celery_hygiene.W020    no time limit on any queue, nor a global one
celery_hygiene.E021    a task is routed to a queue that is not declared
celery_hygiene.E022    ``configure_queues(app)`` was called but the declaration is not applied
celery_hygiene.W022    a ``CELERY_HYGIENE_QUEUES`` task pattern matches no registered task
celery_hygiene.W030    a slow queue's worker prefetches more than one message per process
celery_hygiene.W040    Redis ``visibility_timeout`` shorter than a retry countdown or time limit
celery_hygiene.W041    Redis: a killed worker's messages come back only after more than 10 min,
                       and the visibility timeout is over twice what the tasks need
celery_hygiene.W050    ``CONN_MAX_AGE = None``: every worker process keeps connections forever
celery_hygiene.W051    idempotent tasks, but Celery reconnects to the database around every task
=====================  ========================================================================

Each rule lives with its kind: ``audit/tasks.py``, ``audit/queues.py``, ``audit/infra.py`` (broker
and database), on a :class:`~celery_hygiene.ops.audit.scope.Scope`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core import checks

from celery_hygiene.exceptions import HygieneConfigurationError
from celery_hygiene.ops.audit.infra import (
    check_conn_max_age,
    check_connection_reuse,
    check_redis_recovery,
    check_visibility_timeout,
)
from celery_hygiene.ops.audit.queues import (
    check_declaration_applied,
    check_patterns_match,
    check_slow_prefetch,
    check_time_limits,
    check_undeclared_queues,
)
from celery_hygiene.ops.audit.scope import Messages as Messages
from celery_hygiene.ops.audit.scope import Scope as Scope
from celery_hygiene.ops.audit.scope import project_tasks as project_tasks
from celery_hygiene.ops.audit.tasks import (
    check_acks_late,
    check_dead_letter_destination,
    check_retry_forever,
)
from celery_hygiene.task.routing import declared_queues

# -- all together ------------------------------------------------------------------------------

RULES: list[Callable[[Scope], Messages]] = [
    check_conn_max_age,
    check_connection_reuse,
    check_retry_forever,
    check_acks_late,
    check_dead_letter_destination,
    check_time_limits,
    check_undeclared_queues,
    check_declaration_applied,
    check_patterns_match,
    check_slow_prefetch,
    check_visibility_timeout,
    check_redis_recovery,
]


def audit(app: Any, task_pattern: str | None = None) -> Messages:
    """Every rule against one Celery app (and Django's DATABASES); tasks narrowed by a glob."""
    messages: Messages = []
    try:
        specs = declared_queues(app)
    except HygieneConfigurationError as exc:
        messages.append(
            checks.Error(
                str(exc),
                hint="See docs/queues.md for the declaration format.",
                id="celery_hygiene.E001",
            )
        )
        specs = {}
    scope = Scope(app, specs, project_tasks(app, task_pattern))
    for rule in RULES:
        messages.extend(rule(scope))
    return messages
