"""The Celery glue in the pool process: HygieneTask, decorators, publishing, routing."""

from typing import TYPE_CHECKING, Any

__all__ = ["HygieneTask"]

if TYPE_CHECKING:
    from celery_hygiene.task.hygiene_task import HygieneTask


def __getattr__(name: str) -> Any:
    # ``celery_hygiene.task.HygieneTask`` (the module's public path before the rooms) keeps
    # working, lazily: celery_hygiene.task.decorators must import before Django is set up.
    if name == "HygieneTask":
        from celery_hygiene.task.hygiene_task import HygieneTask

        return HygieneTask
    raise AttributeError(f"module 'celery_hygiene.task' has no attribute {name!r}")
