"""A project's task base class as saleor has one (``RestrictWriterDBTask``), made hygienic."""

from __future__ import annotations

from typing import Any

from celery import Task

from celery_hygiene import HygieneTask


class ProjectBaseTask(Task):  # type: ignore[type-arg]
    """What the project had before: its own base with its own hooks and defaults."""

    typing = False

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self.request.project_base_ran = True


class FleetTask(HygieneTask, ProjectBaseTask):  # type: ignore[type-arg]
    """The app's task_cls: hygiene for every task, each keeping its own Celery retries."""
