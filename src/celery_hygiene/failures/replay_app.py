"""The Celery app a replay talks to: which app, its task modules, its declared queues.

Replay runs in a web process or a shell as well as in a command, where no worker started: it
finds the app (:func:`celery_app`), imports its task modules as a worker would
(:func:`load_task_modules`) and checks a ``--queue`` against the declared ones
(:func:`queue_refusal`). Importing the task modules and parsing ``CELERY_HYGIENE_QUEUES`` are the
task room's (``task/discovery.py``, ``task/routing.py``), a layer above this one: the app's
``ready()`` hands them in (:func:`use`), so ``failures/`` never imports ``task/``.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from django.utils.module_loading import import_string

from celery_hygiene import conf


@dataclass
class AppLookups:
    """What replay needs from the task room; the defaults are for a process whose app registry
    never became ready (nothing to import, no queues declared beyond Celery's own)."""

    import_task_modules: Callable[[Any], None] = lambda app: None
    declared_queues: Callable[[Any], Iterable[str]] = lambda app: ()


_lookups = AppLookups()


def use(
    *,
    import_task_modules: Callable[[Any], None],
    declared_queues: Callable[[Any], Iterable[str]],
) -> None:
    """Called once from ``CeleryHygieneConfig.ready()`` with the task room's lookups."""
    _lookups.import_task_modules = import_task_modules
    _lookups.declared_queues = declared_queues


def celery_app() -> Celery:
    """``CELERY_HYGIENE["CELERY_APP"]`` (dotted path or app), else ``celery.current_app``.

    current_app is the project's app as long as it was imported, which the usual
    ``proj/__init__.py`` (``from .celery import app``) does for every manage.py command.
    """
    configured = conf.get("CELERY_APP")
    if configured:
        app: Celery = import_string(configured) if isinstance(configured, str) else configured
        return app
    from celery import current_app

    # celery-types declares current_app as the app itself; at runtime it is a Proxy.
    current: Celery = current_app._get_current_object()  # type: ignore[attr-defined]
    return current


_loaded_apps: set[int] = set()


def load_task_modules(app: Celery) -> None:
    """Import the app's task modules as a worker does at start; once per app and process.

    That is the ``imports``/``include`` modules, a pending ``app.autodiscover_tasks()`` (Celery
    runs it lazily, when a worker imports its default modules), and, like the default
    ``autodiscover_tasks()`` of a Django project, every installed app's ``tasks`` module. Not
    ``app.loader.import_default_modules()``: Celery's Django fixup runs the system checks from it.
    """
    if id(app) in _loaded_apps:
        return
    _lookups.import_task_modules(app)
    _loaded_apps.add(id(app))


def task_registered(app: Celery, name: str) -> tuple[bool, str]:
    """Is ``name`` a task of ``app``? Loads the task modules first if needed.

    Returns (registered, why not loaded) so an import error in a task module is shown to the
    operator instead of a misleading "not registered".
    """
    if name in app.tasks:
        return True, ""
    try:
        load_task_modules(app)
    except Exception as exc:  # noqa: BLE001 - reported to the operator with the refusal
        return name in app.tasks, f" Loading the task modules failed: {exc!r}."
    return name in app.tasks, ""


def known_queues(app: Celery) -> set[str]:
    """Queues a replay may be sent to: ``CELERY_HYGIENE_QUEUES``, ``task_queues``, the default."""
    names = {app.conf.task_default_queue or "celery"}
    with contextlib.suppress(Exception):  # a broken declaration is the checks' business
        names.update(_lookups.declared_queues(app))
    names.update(queue.name for queue in app.conf.task_queues or ())
    return names


def queue_refusal(app: Celery, queue: str | None) -> str:
    """Why ``--queue`` is refused ('' if it is declared): a typo would park the message in a
    queue that no worker consumes, and the operator would read "replayed"."""
    if not queue:
        return ""
    known = known_queues(app)
    if queue in known:
        return ""
    close = difflib.get_close_matches(queue, sorted(known), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"queue {queue!r} is not declared (CELERY_HYGIENE_QUEUES or the Celery app's "
        f"task_queues: {', '.join(sorted(known))}); no worker may consume it.{hint} "
        "Use --force to send it there anyway."
    )
