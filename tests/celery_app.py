"""The Celery app of the test project; worker subprocesses run ``celery -A tests.celery_app``."""

import importlib
import os
import pkgutil

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

import tests.testapp  # noqa: E402

app = Celery("tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Every tests/testapp/tasks*.py module is a task module, so each area of the suite keeps its own.
app.conf.imports = [
    f"tests.testapp.{module.name}"
    for module in pkgutil.iter_modules(tests.testapp.__path__)
    if module.name.startswith("tasks")
]
# Import them here too (not via app.loader.import_default_modules, which also runs Django's
# system checks from Celery's Django fixup): publishers need the task objects registered.
for module_name in app.conf.imports:
    importlib.import_module(module_name)
