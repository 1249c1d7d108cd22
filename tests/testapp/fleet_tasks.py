"""Tasks of the ``task_cls`` app (tests/fleet_celery_app.py): plain ``@app.task`` as they were."""

from __future__ import annotations

from typing import Any

from tests.fleet_celery_app import app
from tests.testapp.models import Attempt

ERRORS: dict[str, type[Exception]] = {"io": OSError, "value": ValueError}


@app.task(name="fleet.app.plain_fails")
def plain_fails(key: str) -> None:
    Attempt.objects.create(task="fleet.app.plain_fails", key=key)
    raise ValueError(f"plain failure {key}")


@app.task(
    name="fleet.app.autoretry_io",
    autoretry_for=(IOError,),
    max_retries=1,
    default_retry_delay=0.2,
)
def autoretry_io(key: str, error: str) -> None:
    Attempt.objects.create(task="fleet.app.autoretry_io", key=key)
    raise ERRORS[error](f"{error} failure {key}")


@app.task(name="fleet.app.base_hook", bind=True)
def base_hook(self: Any, key: str) -> None:
    """Fails after recording whether the project base's before_start ran."""
    Attempt.objects.create(task="fleet.app.base_hook", key=key)
    if not getattr(self.request, "project_base_ran", False):
        return
    raise ValueError("the project base ran; now fail")
