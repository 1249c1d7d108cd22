"""A public path, kept: the module now lives in ``celery_hygiene.task.decorators``."""

from celery_hygiene.task.decorators import (
    AppDecorators,
    for_app,
    hygienic_task,
    idempotent_task,
    singleton_task,
)

__all__ = [
    "AppDecorators",
    "for_app",
    "hygienic_task",
    "idempotent_task",
    "singleton_task",
]
