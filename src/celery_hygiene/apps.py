from django.apps import AppConfig


class CeleryHygieneConfig(AppConfig):
    name = "celery_hygiene"
    verbose_name = "Celery hygiene"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
