"""Audit rules on the broker and the database: Redis visibility and recovery, database
connections (W040-W051)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from celery_hygiene.ops.audit.scope import (
    DEFAULT_VISIBILITY_TIMEOUT,
    Messages,
    Scope,
    is_idempotent,
)

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
