"""The Celery app of the fault-injection project; workers run ``celery -A chaos.celery_app``."""

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chaos.settings")
django.setup()

app = Celery("chaos")
app.config_from_object("django.conf:settings", namespace="CELERY")

import chaos.app.tasks  # noqa: E402,F401 - registers the tasks for workers and the publisher
