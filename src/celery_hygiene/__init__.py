"""celery-hygiene: task hygiene for Django + Celery.

Import the decorators from here; the models live in ``celery_hygiene.models``.
"""

from typing import TYPE_CHECKING, Any

__all__ = [
    "HygieneTask",
    "NotFinished",
    "RetryPolicy",
    "hygienic_task",
    "idempotent_task",
    "singleton_task",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from celery_hygiene.exceptions import NotFinished
    from celery_hygiene.failures.retry import RetryPolicy
    from celery_hygiene.task.decorators import hygienic_task, idempotent_task, singleton_task
    from celery_hygiene.task.hygiene_task import HygieneTask


def __getattr__(name: str) -> Any:
    # Lazy, so that importing celery_hygiene (e.g. in INSTALLED_APPS) does not import models
    # before Django's app registry is ready.
    if name == "NotFinished":
        from celery_hygiene.exceptions import NotFinished

        return NotFinished
    if name in ("hygienic_task", "idempotent_task", "singleton_task"):
        from celery_hygiene.task import decorators

        return getattr(decorators, name)
    if name == "RetryPolicy":
        from celery_hygiene.failures.retry import RetryPolicy

        return RetryPolicy
    if name == "HygieneTask":
        from celery_hygiene.task.hygiene_task import HygieneTask

        return HygieneTask
    raise AttributeError(f"module 'celery_hygiene' has no attribute {name!r}")
