from django.apps import AppConfig


class ChaosAppConfig(AppConfig):
    name = "chaos.app"
    label = "chaos_app"
    default_auto_field = "django.db.models.BigAutoField"
