"""Audit rules on queues: time limits, routing, the declaration, prefetch (W020-W030, E021-E022)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

from django.core import checks

from celery_hygiene.ops.audit.scope import (
    Messages,
    Scope,
    some_names,
)
from celery_hygiene.task.routing import configure_requested

# -- queues ------------------------------------------------------------------------------------


def check_time_limits(scope: Scope) -> Messages:
    app = scope.app
    if any(spec.bounded for spec in scope.specs.values()):
        return []
    if app.conf.task_time_limit or app.conf.task_soft_time_limit:
        return []
    return [
        checks.Warning(
            "No queue has a time limit and CELERY_TASK_TIME_LIMIT is not set: a stuck task holds "
            "its worker process forever.",
            hint="Declare a time-bounded queue in CELERY_HYGIENE_QUEUES (soft_time_limit, "
            "time_limit) for tasks that must end, or set CELERY_TASK_SOFT_TIME_LIMIT and "
            "CELERY_TASK_TIME_LIMIT as a backstop.",
            id="celery_hygiene.W020",
        )
    ]


def _routed_queues(scope: Scope) -> Iterable[tuple[str, str]]:
    """(where, queue name) for every place the config or a task itself names a queue.

    Routing chosen at call sites (``apply_async(queue=...)``, ``send_task``) is not in the config
    and cannot be seen here.
    """
    app = scope.app
    routes = app.conf.task_routes
    for route_map in routes if isinstance(routes, list | tuple) else [routes]:
        if isinstance(route_map, dict):
            for pattern, route in route_map.items():
                queue = route if isinstance(route, str) else (route or {}).get("queue")
                if isinstance(queue, str):
                    yield f"task_routes[{pattern!r}]", queue
    for task in scope.tasks:
        if isinstance(getattr(task, "queue", None), str):
            yield f"task {task.name!r} (queue={task.queue!r})", task.queue


def _unrouted(scope: Scope) -> list[str]:
    """Tasks no route or task option sends anywhere: they go to ``task_default_queue``."""
    from celery.app.routes import prepare

    try:
        routers = prepare(scope.app.conf.task_routes)
    except Exception:  # noqa: BLE001 - an unreadable router is reported by Celery itself
        return []
    unrouted = []
    for task in scope.tasks:
        if isinstance(getattr(task, "queue", None), str):
            continue
        if not any(_route_of(router, task) for router in routers):
            unrouted.append(task.name)
    return unrouted


def _route_of(router: Any, task: Any) -> Any:
    try:
        return router(task.name, (), {}, {}, task=task)
    except Exception:  # noqa: BLE001 - a user router failing on an empty call routes nothing
        return None


def check_undeclared_queues(scope: Scope) -> Messages:
    known = set(scope.specs) | {queue.name for queue in scope.app.conf.task_queues or ()}
    if not known:
        return []  # nothing declared: Celery creates queues on demand, W020 covers the rest
    declared = ", ".join(sorted(known))
    messages: Messages = [
        checks.Error(
            f"{where} routes tasks to queue {queue!r}, which is not declared: no worker pool "
            "is planned for it, so its tasks wait forever.",
            hint=f"Declare {queue!r} in CELERY_HYGIENE_QUEUES, or route to a declared queue "
            f"(declared: {declared}).",
            obj=queue,
            id="celery_hygiene.E021",
        )
        for where, queue in _routed_queues(scope)
        if queue not in known
    ]
    default = scope.app.conf.task_default_queue
    if default and default not in known:
        unrouted = _unrouted(scope)
        which = (
            f"{len(unrouted)} task(s) match no route ({some_names(unrouted)}) and go"
            if unrouted
            else "Tasks that match no route go"
        )
        messages.append(
            checks.Error(
                f"{which} to the default queue {default!r}, which is not declared: no worker "
                "consumes it, so they wait forever.",
                hint="The routing is missing, not the queue: list these tasks (full dotted "
                "names, or globs such as 'proj.billing.*') under a queue's 'tasks' in "
                "CELERY_HYGIENE_QUEUES, or mark one declared queue 'default': True "
                f"(declared: {declared}). If the declaration is there, check that "
                "configure_queues(app) runs in your Celery app module.",
                obj=default,
                id="celery_hygiene.E021",
            )
        )
    return messages


def check_declaration_applied(scope: Scope) -> Messages:
    """``configure_queues(app)`` was called, but the app's config does not hold its queues."""
    app = scope.app
    if not configure_requested(app):
        return []
    applied = {queue.name for queue in app.conf.task_queues or ()}
    missing = [name for name in scope.specs if name not in applied]
    if scope.specs and not missing:
        return []
    what = (
        f"queue(s) {', '.join(map(repr, missing))} are declared but not in the app's task_queues"
        if scope.specs
        else "no CELERY_HYGIENE_QUEUES declaration was found"
    )
    return [
        checks.Error(
            f"configure_queues() was called for the Celery app {app.main!r}, but {what}: "
            f"tasks are published to {app.conf.task_default_queue!r} instead.",
            hint="Define CELERY_HYGIENE_QUEUES in the settings module Celery reads "
            "(config_from_object('django.conf:settings', namespace='CELERY')), or pass it: "
            "configure_queues(app, {...}). See docs/queues.md.",
            obj=app.main,
            id="celery_hygiene.E022",
        )
    ]


def check_patterns_match(scope: Scope) -> Messages:
    """A pattern that matches no registered task is a typo or a short name (they never match)."""
    names = [name for name in scope.app.tasks if not name.startswith("celery.")]
    if not names:
        return []  # W002 says no task was found; every pattern would be reported
    messages: Messages = []
    for spec in scope.specs.values():
        for pattern in spec.tasks:
            if any(fnmatch.fnmatchcase(name, pattern) for name in names):
                continue
            full = sorted(n for n in names if fnmatch.fnmatchcase(n.rsplit(".", 1)[-1], pattern))
            hint = (
                f"Patterns match full dotted task names: did you mean {some_names(full)}?"
                if full
                else "Patterns match full dotted task names (e.g. 'proj.billing.tasks.charge' "
                "or 'proj.billing.*'), as in task_routes. Is the task module imported?"
            )
            messages.append(
                checks.Warning(
                    f"CELERY_HYGIENE_QUEUES[{spec.name!r}] pattern {pattern!r} matches no "
                    "registered task.",
                    hint=hint,
                    obj=pattern,
                    id="celery_hygiene.W022",
                )
            )
    return messages


def check_slow_prefetch(scope: Scope) -> Messages:
    messages: Messages = []
    for spec in scope.specs.values():
        multiplier = spec.prefetch_multiplier or scope.app.conf.worker_prefetch_multiplier
        if spec.slow and multiplier and multiplier > 1:
            messages.append(
                checks.Warning(
                    f"Slow queue {spec.name!r} is consumed with prefetch multiplier {multiplier}: "
                    "a process busy with a long task holds messages an idle worker could run.",
                    hint=f"Set 'prefetch_multiplier': 1 on {spec.name!r} and start its worker "
                    "with --prefetch-multiplier=1 (or CELERY_WORKER_PREFETCH_MULTIPLIER = 1).",
                    obj=spec.name,
                    id="celery_hygiene.W030",
                )
            )
    return messages
