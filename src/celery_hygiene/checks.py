"""Django system checks for celery_hygiene configuration (the hygiene audit lives here)."""

from __future__ import annotations

from typing import Any

from django.core import checks

from . import conf


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
    """The hygiene audit (see ``audit.py`` for every id) against the project's Celery app."""
    from . import audit

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
    from .replay import celery_app

    try:
        app = celery_app()
        _import_task_modules(app)
    except Exception as exc:  # noqa: BLE001 - reported as a check error, with the cause
        return None, checks.Error(
            f"Could not load the Celery app or its task modules: {exc!r}.",
            hint="CELERY_HYGIENE['CELERY_APP'] must be the dotted path of your app, e.g. "
            "'proj.celery.app', and its task modules must import cleanly.",
            id="celery_hygiene.E002",
        )
    return app, None


def _import_task_modules(app: Any) -> None:
    """Import what ``autodiscover_tasks()`` and ``imports`` would: the audit must see every task.

    Not ``app.loader.import_default_modules()``: in a worker, Celery's Django fixup runs the
    system checks from inside that very call, so calling it from a check recurses.
    """
    import importlib
    import importlib.util

    from django.apps import apps

    for module in app.loader.default_modules:
        app.loader.import_task_module(module)
    for config in apps.get_app_configs():
        name = f"{config.name}.tasks"
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the app is a module, not a package
            found = False
        if found:
            importlib.import_module(name)
