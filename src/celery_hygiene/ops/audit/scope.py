"""What the audit's rules look at (:class:`Scope`) and the task tests they share."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from django.core import checks

from celery_hygiene.task.routing import QueueSpec

Messages = list[checks.CheckMessage]
DEFAULT_VISIBILITY_TIMEOUT = 3600.0  # kombu's Redis transport default


@dataclass(frozen=True)
class Scope:
    """What the rules look at: the Celery app, its declared queues, the tasks to audit."""

    app: Any
    specs: dict[str, QueueSpec]
    tasks: list[Any]


def project_tasks(app: Any, pattern: str | None = None) -> list[Any]:
    """Registered tasks, without Celery's own (``celery.*``, e.g. chord_unlock retries forever).

    ``pattern`` (a glob) narrows the audit, e.g. to one Django app's tasks: every Celery app in
    a process also holds every ``shared_task`` imported so far.
    """
    return [
        task
        for name, task in sorted(app.tasks.items())
        if not name.startswith("celery.")
        and (pattern is None or fnmatch.fnmatchcase(name, pattern))
    ]


def is_idempotent(task: Any) -> bool:
    return getattr(task, "hygiene_idempotency", None) is not None


def is_hygienic(task: Any) -> bool:
    return hasattr(task, "hygiene_retry")


NAMES_SHOWN = 20


def some_names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")
