"""The example's Celery app: config from Django settings, queues from the hygiene declaration."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_worker.settings")

app = Celery("example_worker")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fixup closes every DB connection around every task unless this is set; claims
# touch the database on every task, so reuse the connection (recycled every 100 tasks).
app.conf.CELERY_DB_REUSE_MAX = 100

# CELERY_HYGIENE_QUEUES (settings.py) -> kombu Queues, task_routes, per-queue time limits.
from celery_hygiene.routing import configure_queues  # noqa: E402

configure_queues(app)
app.autodiscover_tasks()
