"""Importing a Celery app's task modules the way a worker does, without Celery's side effects.

The audit must see every task, and replay (in a web server or a shell, where no worker started)
must find the task it re-sends. ``app.loader.import_default_modules()`` would do both, but in a
Django project Celery's fixup runs the system checks from inside that call: the checks would
recurse, and every replay would print the audit. So this imports the same modules itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import weakref
from typing import Any


def import_task_modules(app: Any) -> None:
    """The ``imports``/``include`` modules, the app's pending ``autodiscover_tasks(...)`` calls,
    and, as the default ``autodiscover_tasks()`` of a Django project, every installed app's
    ``tasks`` module."""
    from django.apps import apps

    for module in app.loader.default_modules:
        app.loader.import_task_module(module)
    _run_pending_autodiscovery(app)
    for config in apps.get_app_configs():
        name = f"{config.name}.tasks"
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the app is a module, not a package
            found = False
        if found:
            importlib.import_module(name)


def _run_pending_autodiscovery(app: Any) -> None:
    """Run the app's lazy ``autodiscover_tasks(packages=..., related_name=...)`` calls now.

    Celery defers them to its ``import_modules`` signal, which only a worker (or
    ``import_default_modules``) sends. Sending it here would also run Celery's Django fixup,
    which runs the system checks again; so call just the autodiscovery receivers, as
    ``autodiscover_tasks(force=True)`` would.
    """
    from celery import signals
    from vine import promise

    receivers: list[Any] = signals.import_modules._live_receivers(app)  # type: ignore[attr-defined]
    for receiver in receivers:
        target = receiver() if isinstance(receiver, weakref.ReferenceType) else receiver
        if not isinstance(target, promise):
            continue
        fun: Any = target.fun
        if getattr(fun, "__self__", None) is app and getattr(fun, "__name__", "") == (
            "_autodiscover_tasks"
        ):
            fun(*(target.args or ()), **(target.kwargs or {}))
