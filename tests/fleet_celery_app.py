"""A second Celery app whose ``task_cls`` is a HygieneTask subclass with a base of its own.

Workers run ``celery -A tests.fleet_celery_app``: every ``@app.task`` here is hygienic through
the app's task class, as in a codebase that adopts the library fleet-wide (issue 23).
"""

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

# Not the current app of the test process (tests.celery_app is); `celery -A` makes it the
# worker's.
app = Celery("fleet", task_cls="tests.testapp.fleet_base:FleetTask", set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")

import tests.testapp.fleet_tasks  # noqa: E402, F401  (registers the app's tasks)
