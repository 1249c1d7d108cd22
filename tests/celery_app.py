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

if os.environ.get("HYGIENE_FAIL_PUBLISH_FLAG"):
    # Fault injection for one test's worker: while the flag file exists, every publish from
    # this process fails the way a refused broker publish does (after kombu's own retries).
    from kombu import Producer
    from kombu.exceptions import OperationalError

    _publish = Producer.publish

    def _refusing_publish(self: Producer, *args: object, **kwargs: object) -> object:
        if os.path.exists(os.environ["HYGIENE_FAIL_PUBLISH_FLAG"]):
            raise OperationalError("injected: broker refused the publish")
        return _publish(self, *args, **kwargs)

    Producer.publish = _refusing_publish  # type: ignore[method-assign]

if os.environ.get("HYGIENE_FAIL_COMPLETION_BATCH_FLAG"):
    # Fault injection for one test's worker: while the flag file exists, the main process's
    # batched completion fails the way a write to an unreachable database does.
    from django.db import OperationalError as DatabaseDown

    from celery_hygiene.claims import state as claims

    _complete_many = claims.complete_many

    def _refusing_complete_many(*args: object, **kwargs: object) -> object:
        if os.path.exists(os.environ["HYGIENE_FAIL_COMPLETION_BATCH_FLAG"]):
            raise DatabaseDown("injected: the database refused the completion batch")
        return _complete_many(*args, **kwargs)  # type: ignore[arg-type]

    claims.complete_many = _refusing_complete_many  # type: ignore[assignment]

if os.environ.get("HYGIENE_KILL_WRITER_FLAG"):
    # Fault injection for one test's worker: the amortized-completion writer's thread dies
    # (an exception nothing in it catches) once, while the flag file exists.
    from celery_hygiene.worker import amortized

    _cycle = amortized.CompletionWriter.cycle

    def _dying_cycle(self: amortized.CompletionWriter) -> None:
        flag = os.environ["HYGIENE_KILL_WRITER_FLAG"]
        if os.path.exists(flag):
            os.unlink(flag)
            raise SystemExit("injected: the completion writer's thread dies")
        _cycle(self)

    amortized.CompletionWriter.cycle = _dying_cycle  # type: ignore[method-assign]
