from django.apps import AppConfig


class CeleryHygieneConfig(AppConfig):
    name = "celery_hygiene"
    verbose_name = "Celery hygiene"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery_hygiene.ops import checks  # noqa: F401  (registers the system checks)
        from celery_hygiene.worker import failure_reports as worker_failures

        worker_failures.connect()
        from celery_hygiene.worker import hooks as worker_hooks

        worker_hooks.connect()  # duration watchdog, run statistics, per-queue time limits
        from celery_hygiene.worker import runstats_timer

        runstats_timer.connect()  # run statistics flushed on a timer too, not only after tasks
        from celery_hygiene.failures import replay_app
        from celery_hygiene.task.discovery import import_task_modules
        from celery_hygiene.task.routing import declared_queues

        # Replay (failures/) needs the task room's lookups; handed down, not imported up.
        replay_app.use(import_task_modules=import_task_modules, declared_queues=declared_queues)
