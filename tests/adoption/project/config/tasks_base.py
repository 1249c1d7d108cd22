"""The project's task base class: hygiene for every task of the app, in one line (task_cls)."""

from celery import Task

from celery_hygiene import HygieneTask


class AuditedTask(Task):
    """What the project had before: a base class of its own, with its own defaults."""

    typing = False  # the project's own choice, kept

    def before_start(self, task_id, args, kwargs):
        self.request.audited = True


class ProjectTask(HygieneTask, AuditedTask):
    """HygieneTask in front: a dead letter for every task of the app, each keeping its own
    Celery retries (no hygiene_retry chosen here)."""
