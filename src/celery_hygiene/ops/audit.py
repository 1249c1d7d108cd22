"""The hygiene audit: Celery configuration the field knows to hurt, as Django check messages.

Each rule is one small function ``(Celery app) -> messages`` with its own id; ``audit`` runs them
all. Registered as a system check in ``ops/checks.py`` and run by ``manage.py taskhygiene check``.

=====================  ========================================================================
id                     what
=====================  ========================================================================
celery_hygiene.E001    ``CELERY_HYGIENE_QUEUES`` is invalid
celery_hygiene.E002    the Celery app named by ``CELERY_HYGIENE["CELERY_APP"]`` cannot be loaded
celery_hygiene.W002    no project tasks found in the Celery app (wrong app?)
celery_hygiene.W010    a task can retry forever
celery_hygiene.W011    ``acks_late`` on a task that is not idempotent (redelivery runs it twice)
celery_hygiene.W012    an idempotent or singleton task that a crash loses (no ``acks_late`` +
                       ``reject_on_worker_lost``)
celery_hygiene.W013    tasks that can fail without leaving a dead letter (not ``HygieneTask``)
celery_hygiene.W020    no time limit on any queue, nor a global one
celery_hygiene.E021    a task is routed to a queue that is not declared
celery_hygiene.E022    ``configure_queues(app)`` was called but the declaration is not applied
celery_hygiene.W022    a ``CELERY_HYGIENE_QUEUES`` task pattern matches no registered task
celery_hygiene.W030    a slow queue's worker prefetches more than one message per process
celery_hygiene.W040    Redis ``visibility_timeout`` shorter than a retry countdown or time limit
celery_hygiene.W041    Redis: a killed worker's messages come back only after more than 10 min,
                       and the visibility timeout is over twice what the tasks need
celery_hygiene.W050    ``CONN_MAX_AGE = None``: every worker process keeps connections forever
celery_hygiene.W051    idempotent tasks, but Celery reconnects to the database around every task
=====================  ========================================================================
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import checks

from celery_hygiene.exceptions import HygieneConfigurationError
from celery_hygiene.task.routing import QueueSpec, configure_requested, declared_queues

Messages = list[checks.CheckMessage]
DEFAULT_VISIBILITY_TIMEOUT = 3600.0  # kombu's Redis transport default


@dataclass(frozen=True)
class Scope:
    """What the rules look at: the Celery app, its declared queues, the tasks to audit."""

    app: Any
    specs: dict[str, QueueSpec]
    tasks: list[Any]


def project_tasks(app: Any, pattern: str | None = None) -> list[Any]:
    """Registered tasks, without Celery's own (``celery.*``, e.g. chord_unlock retries forever).

    ``pattern`` (a glob) narrows the audit, e.g. to one Django app's tasks: every Celery app in
    a process also holds every ``shared_task`` imported so far.
    """
    return [
        task
        for name, task in sorted(app.tasks.items())
        if not name.startswith("celery.")
        and (pattern is None or fnmatch.fnmatchcase(name, pattern))
    ]


def is_idempotent(task: Any) -> bool:
    return getattr(task, "hygiene_idempotency", None) is not None


def is_hygienic(task: Any) -> bool:
    return hasattr(task, "hygiene_retry")


# -- tasks -------------------------------------------------------------------------------------


def keeps_celery_retries(task: Any) -> bool:
    """A HygieneTask that chose no policy (``task_cls``, ``base=``): Celery's own retries."""
    return is_hygienic(task) and getattr(task, "hygiene_retry", None) is None


def check_retry_forever(scope: Scope) -> Messages:
    # A hygiene policy's max_attempts is a required, bounded number; a task that keeps Celery's
    # retries (task_cls) is held to the default policy's cap at run time, which the team should
    # know before deploying, not find in the dead letters.
    messages: Messages = []
    for task in scope.tasks:
        if task.max_retries is not None:
            continue
        if not is_hygienic(task):
            messages.append(
                checks.Warning(
                    f"Task {task.name!r} has max_retries=None: once it starts retrying, it never "
                    "stops.",
                    hint="Set max_retries (e.g. max_retries=5), or use @hygienic_task(retry="
                    "RetryPolicy(max_attempts=5)) so the last failure becomes a dead letter "
                    "instead of a loop.",
                    obj=task.name,
                    id="celery_hygiene.W010",
                )
            )
        elif keeps_celery_retries(task):
            attempts = task.celery_retries().policy.max_attempts
            messages.append(
                checks.Warning(
                    f"Task {task.name!r} has max_retries=None: plain Celery retries it forever; "
                    f"with hygiene it stops after {attempts} attempts and becomes a dead letter.",
                    hint="Set the cap you mean on the task (e.g. max_retries=10), or choose a "
                    "policy: @app.task(hygiene_retry=RetryPolicy(max_attempts=..., ...)). The "
                    "cap used meanwhile is CELERY_HYGIENE['DEFAULT_RETRY_POLICY']'s max_attempts.",
                    obj=task.name,
                    id="celery_hygiene.W010",
                )
            )
    return messages


def check_acks_late(scope: Scope) -> Messages:
    messages: Messages = []
    for task in scope.tasks:
        late, reject = bool(task.acks_late), bool(task.reject_on_worker_lost)
        if late and not is_idempotent(task):
            messages.append(_acks_late_not_idempotent(task, reject))
        elif is_idempotent(task) and not (late and reject):
            messages.append(_idempotent_acks_early(task, late))
    return messages


def _acks_late_not_idempotent(task: Any, reject: bool) -> checks.CheckMessage:
    lost = (
        "a killed pool process requeues it too"
        if reject
        else "a killed pool process still loses it (no reject_on_worker_lost)"
    )
    return checks.Warning(
        f"Task {task.name!r} acknowledges late (acks_late=True) but is not idempotent: a message "
        f"redelivered after a lost connection or worker restart runs its side effects twice; "
        f"{lost}.",
        hint="Make it idempotent with @idempotent_task(entity=...), so a redelivery is "
        "harmless, or set acks_late=False if losing a run is better than running it twice.",
        obj=task.name,
        id="celery_hygiene.W011",
    )


def _idempotent_acks_early(task: Any, late: bool) -> checks.CheckMessage:
    missing = "reject_on_worker_lost=False" if late else "acks_late=False"
    spec = getattr(task, "hygiene_idempotency", None)
    if getattr(spec, "singleton", False):
        what = "is a singleton task (one run at a time)"
        safe = "the claim keeps a redelivered copy from running next to a live run"
    else:
        what = "is idempotent"
        safe = "running it again would be safe"
    return checks.Warning(
        f"Task {task.name!r} {what} but a worker crash loses it ({missing}), although {safe}.",
        hint="Set acks_late=True and reject_on_worker_lost=True on the task (or "
        "CELERY_TASK_ACKS_LATE / CELERY_TASK_REJECT_ON_WORKER_LOST).",
        obj=task.name,
        id="celery_hygiene.W012",
    )


NAMES_SHOWN = 20


def _some(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def check_dead_letter_destination(scope: Scope) -> Messages:
    """Tasks whose last failure leaves nothing behind: a FAILURE state in a result backend, if any.

    One message for all of them: a codebase adopting the library has dozens.
    """
    traceless = [task.name for task in scope.tasks if not is_hygienic(task)]
    if not traceless:
        return []
    return [
        checks.Warning(
            f"{len(traceless)} task(s) can fail without leaving a dead letter (they are not "
            f"HygieneTask tasks): {_some(traceless)}.",
            hint="Make hygiene the default for every task of the app: Celery(..., task_cls="
            "'proj.tasks_base:ProjectTask') with class ProjectTask(HygieneTask) (see "
            "docs/retries-and-dead-letters.md), or decorate them with @hygienic_task.",
            obj=traceless[0],
            id="celery_hygiene.W013",
        )
    ]


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
            f"{len(unrouted)} task(s) match no route ({_some(unrouted)}) and go"
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
                f"Patterns match full dotted task names: did you mean {_some(full)}?"
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


# -- broker and database -----------------------------------------------------------------------


def _longest_waits(scope: Scope) -> list[tuple[float, str]]:
    """(seconds, what) a message may stay unacknowledged: retry countdowns and time limits."""
    waits = [(spec.time_limit, f"queue {spec.name!r} time_limit") for spec in scope.specs.values()]
    waits.append((scope.app.conf.task_time_limit, "CELERY_TASK_TIME_LIMIT"))
    for task in scope.tasks:
        waits.append((task.time_limit, f"task {task.name!r} time_limit"))
        waits.append((_longest_countdown(task), f"task {task.name!r} retry countdown"))
    return sorted(((float(s), what) for s, what in waits if s), reverse=True)


def _longest_countdown(task: Any) -> float | None:
    if callable(getattr(task, "hygiene_policy", None)):
        return float(task.hygiene_policy().longest_countdown())
    # autoretry_for/retry_backoff exist only on tasks that set them (Celery's autoretry.py).
    if getattr(task, "autoretry_for", ()) and getattr(task, "retry_backoff", False):
        return float(getattr(task, "retry_backoff_max", 600))
    return float(task.default_retry_delay) if task.default_retry_delay else None


def _redis_options(app: Any) -> dict[str, Any] | None:
    """The broker transport options when the broker is Redis, else None."""
    from celery_hygiene.worker.redis_recovery import uses_redis

    return dict(app.conf.broker_transport_options or {}) if uses_redis(app) else None


def check_visibility_timeout(scope: Scope) -> Messages:
    options = _redis_options(scope.app)
    if options is None:
        return []
    timeout = float(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
    too_long = [(seconds, what) for seconds, what in _longest_waits(scope) if seconds > timeout]
    if not too_long:
        return []
    seconds, what = too_long[0]
    others = f" (and {len(too_long) - 1} more)" if len(too_long) > 1 else ""
    return [
        checks.Warning(
            f"Redis visibility_timeout is {timeout:g}s but {what} is {seconds:g}s{others}: Redis "
            "hands a message that stays unacknowledged that long to another worker, so it runs "
            "twice.",
            hint=f"Set CELERY_BROKER_TRANSPORT_OPTIONS = {{'visibility_timeout': "
            f"{int(seconds * 1.2)}}} or more, or shorten the countdown/time limit.",
            id="celery_hygiene.W040",
        )
    ]


# A killed worker's message that takes longer than this to come back is worth a warning.
SLOW_RECOVERY_SECONDS = 600.0


def check_redis_recovery(scope: Scope) -> Messages:
    """How long a killed worker's work stays away on Redis, from the settings that decide it."""
    from celery_hygiene import conf

    options = _redis_options(scope.app)
    if options is None:
        return []
    timeout = float(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
    kombu_scan = float(options.get("unacked_restore_interval", 10)) * float(
        options.get("unacked_restore_throttle", 10)
    )
    scan = min(float(conf.get("REDIS_RESTORE_SECONDS")), kombu_scan)
    lease = float(conf.get("DEFAULT_LEASE_SECONDS"))
    recovery = max(timeout + scan, lease)
    waits = _longest_waits(scope)
    # W040 wants the timeout above the longest wait; only a timeout far above what the tasks
    # need is worth lowering.
    needed = 2 * waits[0][0] if waits else 0.0
    if recovery <= max(SLOW_RECOVERY_SECONDS, needed):
        return []
    return [
        checks.Warning(
            f"On Redis, a message whose worker was killed comes back after visibility_timeout "
            f"({timeout:g}s) plus the next restore scan (every {scan:g}s): about {recovery:g}s "
            "after the kill. Until then the work waits.",
            hint="Lower CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'] (keep it above your "
            "longest retry countdown, ETA and plain-task run, see W040); celery_hygiene's "
            "workers scan every CELERY_HYGIENE['REDIS_RESTORE_SECONDS']. See docs/brokers.md.",
            id="celery_hygiene.W041",
        )
    ]


def check_conn_max_age(scope: Scope | None = None) -> Messages:
    return [
        checks.Warning(
            f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is None: every worker process (and every "
            "thread of the threads pool) keeps its connection open for its whole life, and a "
            "connection the server dropped fails the next task.",
            hint="Use CONN_MAX_AGE = 0 for workers (Celery closes it after each task), a few "
            "minutes at most, or a connection pooler such as PgBouncer.",
            obj=alias,
            id="celery_hygiene.W050",
        )
        for alias, database in settings.DATABASES.items()
        if "CONN_MAX_AGE" in database and database["CONN_MAX_AGE"] is None
    ]


def check_connection_reuse(scope: Scope) -> Messages:
    """Celery's Django fixup closes every connection before and after each task by default.

    A claim touches the database on every run, so without reuse each idempotent task pays a new
    PostgreSQL connection (tens of milliseconds, and connection storms on the server).
    """
    idempotent = [task.name for task in scope.tasks if is_idempotent(task)]
    if not idempotent or scope.app.conf.get("CELERY_DB_REUSE_MAX"):
        return []
    return [
        checks.Warning(
            f"{len(idempotent)} idempotent task(s) (e.g. {idempotent[0]!r}) claim in the database "
            "on every run, but Celery closes the worker's database connections around every "
            "task, so each run opens a new connection.",
            hint=_reuse_hint(scope.app),
            obj=idempotent[0],
            id="celery_hygiene.W051",
        )
    ]


def _reuse_hint(app: Any) -> str:
    # Celery's Django fixup reads app.conf.get("CELERY_DB_REUSE_MAX"): with the config taken
    # from Django settings that finds the Django setting of that exact name, whatever the
    # namespace (a namespace="CELERY" project writes its other Celery settings the same way).
    namespace = getattr(app, "namespace", None)
    if namespace == "CELERY":
        where = "In Django settings, next to your other CELERY_* settings: "
    elif namespace:
        where = (
            f"In Django settings (this exact name: Celery's Django fixup does not read "
            f"{namespace}_DB_REUSE_MAX): "
        )
    else:
        where = "In your Celery config (or Django settings): "
    return (
        where + "CELERY_DB_REUSE_MAX = 100 (each worker process reuses its connection, "
        "recycled every 100 tasks; this upper-case name is the current one: Celery's Django "
        "fixup reads exactly it and has no lower-case setting for it), or put PgBouncer in "
        "front of PostgreSQL."
    )


# -- all together ------------------------------------------------------------------------------

RULES: list[Callable[[Scope], Messages]] = [
    check_conn_max_age,
    check_connection_reuse,
    check_retry_forever,
    check_acks_late,
    check_dead_letter_destination,
    check_time_limits,
    check_undeclared_queues,
    check_declaration_applied,
    check_patterns_match,
    check_slow_prefetch,
    check_visibility_timeout,
    check_redis_recovery,
]


def audit(app: Any, task_pattern: str | None = None) -> Messages:
    """Every rule against one Celery app (and Django's DATABASES); tasks narrowed by a glob."""
    messages: Messages = []
    try:
        specs = declared_queues(app)
    except HygieneConfigurationError as exc:
        messages.append(
            checks.Error(
                str(exc),
                hint="See docs/queues.md for the declaration format.",
                id="celery_hygiene.E001",
            )
        )
        specs = {}
    scope = Scope(app, specs, project_tasks(app, task_pattern))
    for rule in RULES:
        messages.extend(rule(scope))
    return messages
