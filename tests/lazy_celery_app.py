"""A Celery app laid out as a Django project's ``proj/celery.py``: task modules are *not* imported
when it is created (``imports`` and ``autodiscover_tasks()`` are lazy, honoured when a worker
starts). A web process serving the admin through a plain WSGI server has only this, so replay must
load the task modules itself (tests/test_deadletter_wsgi.py)."""

from celery import Celery

app = Celery("lazy_project", set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ["tests.testapp.tasks_deadletter"]
app.autodiscover_tasks()
