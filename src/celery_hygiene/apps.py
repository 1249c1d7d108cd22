from django.apps import AppConfig


class CeleryHygieneConfig(AppConfig):
    name = "celery_hygiene"
    verbose_name = "Celery hygiene"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            worker_failures,
        )

        worker_failures.connect()
        from . import worker_hooks

        worker_hooks.connect()  # duration watchdog, run statistics, per-queue time limits
        from . import runstats_timer

        runstats_timer.connect()  # run statistics flushed on a timer too, not only after tasks
