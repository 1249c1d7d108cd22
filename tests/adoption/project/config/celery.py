import os

from celery import Celery

from celery_hygiene.decorators import for_app
from celery_hygiene.routing import configure_queues

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("config", task_cls="config.tasks_base:ProjectTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
configure_queues(app)
app.autodiscover_tasks()

# Bound once: `from config.celery import hygienic_task, idempotent_task` in the task modules.
hygienic_task, idempotent_task = for_app(app)
