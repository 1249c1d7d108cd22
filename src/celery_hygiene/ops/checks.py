"""Django system checks for celery_hygiene configuration (the hygiene audit lives here).

The audit's errors are reported by every system check run (every management command, worker
start). Its warnings are reported by ``manage.py check --deploy`` and ``manage.py taskhygiene
check`` only, so a codebase adopting the library is not told about the same 86 tasks before every
``migrate`` and ``shell``; ``CELERY_HYGIENE["AUDIT_WARNINGS_EVERYWHERE"] = True`` brings them back
to every run.
"""

from __future__ import annotations

from typing import Any

from django.core import checks

from celery_hygiene import conf
from celery_hygiene.task.discovery import import_task_modules


@checks.register("celery_hygiene")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [
        checks.Warning(
            f"CELERY_HYGIENE has an unknown key {key!r}.",
            hint=f"Known keys: {', '.join(sorted(conf.DEFAULTS))}.",
            id="celery_hygiene.W001",
        )
        for key in conf.unknown_keys()
    ]


@checks.register("celery_hygiene")
def check_celery_config(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The hygiene audit (see ``ops/audit/`` for every id) against the project's Celery app."""
    messages = audit_messages()
    if conf.get("AUDIT_WARNINGS_EVERYWHERE"):
        return messages
    return [message for message in messages if message.is_serious()]


@checks.register("celery_hygiene", deploy=True)
def check_celery_config_warnings(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """The audit's warnings, for ``check --deploy`` and ``taskhygiene check``."""
    if conf.get("AUDIT_WARNINGS_EVERYWHERE"):
        return []  # check_celery_config reported them already
    return [message for message in audit_messages() if not message.is_serious()]


def audit_messages() -> list[checks.CheckMessage]:
    from celery_hygiene.ops import audit

    app, problem = load_celery_app()
    if problem is not None:
        return [problem]
    messages = audit.audit(app)
    if not audit.project_tasks(app):
        messages.append(
            checks.Warning(
                f"The Celery app {app.main!r} has no project tasks, so no task was audited.",
                hint="Set CELERY_HYGIENE['CELERY_APP'] to your app, e.g. 'proj.celery.app', or "
                "import it in proj/__init__.py as Celery's Django guide does.",
                id="celery_hygiene.W002",
            )
        )
    return messages


def load_celery_app() -> tuple[Any, checks.CheckMessage | None]:
    from celery_hygiene.failures.replay import celery_app

    try:
        app = celery_app()
        import_task_modules(app)
    except Exception as exc:  # noqa: BLE001 - reported as a check error, with the cause
        return None, checks.Error(
            f"Could not load the Celery app or its task modules: {exc!r}.",
            hint="CELERY_HYGIENE['CELERY_APP'] must be the dotted path of your app, e.g. "
            "'proj.celery.app', and its task modules must import cleanly.",
            id="celery_hygiene.E002",
        )
    return app, None
