"""Per-queue worker pools, declared once in the Celery config.

::

    # settings.py (Celery reads CELERY_* settings; this one becomes app.conf.hygiene_queues)
    CELERY_HYGIENE_QUEUES = {
        "fast": {"tasks": ["shop.emails.*", "shop.notify"], "default": True},
        "slow": {"tasks": ["reports.*"], "slow": True, "prefetch_multiplier": 1},
        "bounded": {"tasks": ["payments.*"], "soft_time_limit": 30, "time_limit": 60},
    }

    # proj/celery.py
    app.config_from_object("django.conf:settings", namespace="CELERY")
    configure_queues(app)

``configure_queues`` turns the declaration into ``task_queues`` (kombu ``Queue``s),
``task_routes`` (name globs, first declared queue wins) and ``task_default_queue``. It takes effect
when the app's configuration is loaded (now, if it already is) and again when the app is
finalized, so a call made while Django settings are still importing is not lost; a call that
finds no declaration by then fails loudly (and the audit reports it as E022). A task's own
``queue=`` option (on the decorator or on ``apply_async``) still wins over the patterns: that is
Celery's routing order, unchanged.

Celery has no per-queue time limits, so the worker enforces them: when a message arrives from a
time-bounded queue (``task_received``, in the worker's main process, before the pool sees it),
the tighter of the queue's and the task's own limits is written into the request. This holds
however the message got there (pattern, ``queue=``, a producer without this library). Time
limits need the prefork pool (Celery enforces none in the solo and threads pools).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from django.conf import settings
from kombu import Exchange, Queue

from celery_hygiene.events import log_event
from celery_hygiene.exceptions import HygieneConfigurationError

if TYPE_CHECKING:
    from celery import Celery

SETTING = "CELERY_HYGIENE_QUEUES"  # app.conf.hygiene_queues once Celery read the namespace
_KEYS = {
    "tasks",
    "default",
    "slow",
    "soft_time_limit",
    "time_limit",
    "prefetch_multiplier",
    "concurrency",
    "queue_arguments",
}


class QueueOptions(TypedDict, total=False):
    """One queue's options in ``CELERY_HYGIENE_QUEUES`` (docs/queues.md)."""

    tasks: list[str] | tuple[str, ...]
    default: bool
    slow: bool
    soft_time_limit: float
    time_limit: float
    prefetch_multiplier: int
    concurrency: int
    queue_arguments: dict[str, Any]


# Queue name -> options: the shape of CELERY_HYGIENE_QUEUES, for type checkers.
QueueDeclaration = dict[str, QueueOptions]


@dataclass(frozen=True)
class QueueSpec:
    """One declared queue. ``slow``, ``prefetch_multiplier`` and ``concurrency`` describe the
    worker meant to consume it: the hygiene checks and the docs' worker command read them."""

    name: str
    tasks: tuple[str, ...] = ()
    default: bool = False
    slow: bool = False
    soft_time_limit: float | None = None
    time_limit: float | None = None
    prefetch_multiplier: int | None = None
    concurrency: int | None = None
    queue_arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def bounded(self) -> bool:
        return self.time_limit is not None or self.soft_time_limit is not None

    def kombu_queue(self) -> Queue:
        # The same shape Celery gives queues it creates itself (task_create_missing_queues).
        return Queue(
            self.name,
            Exchange(self.name, type="direct"),
            routing_key=self.name,
            queue_arguments=self.queue_arguments or None,
        )


def parse_queues(declaration: Any) -> dict[str, QueueSpec]:
    """Validate a declaration; every error names the queue and key and says what is expected."""
    if not isinstance(declaration, dict):
        raise HygieneConfigurationError(
            f"{SETTING} must be a dict of queue name -> options, got {type(declaration).__name__}."
        )
    specs = {name: _parse_one(name, options) for name, options in declaration.items()}
    _check_across(specs)
    return specs


def _where(name: str, key: str | None = None) -> str:
    return f"{SETTING}[{name!r}]" + (f"[{key!r}]" if key else "")


def _parse_one(name: Any, options: Any) -> QueueSpec:
    if not isinstance(name, str) or not name:
        raise HygieneConfigurationError(
            f"{SETTING} has a queue name {name!r}: use a non-empty string."
        )
    if not isinstance(options, dict):
        raise HygieneConfigurationError(
            f"{_where(name)} must be a dict of options, e.g. {{'tasks': ['shop.*']}}, "
            f"got {options!r}."
        )
    unknown = sorted(set(options) - _KEYS)
    if unknown:
        raise HygieneConfigurationError(
            f"{_where(name)} has unknown option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(_KEYS))}."
        )
    spec = QueueSpec(
        name=name,
        tasks=_patterns(name, options.get("tasks", ())),
        default=_flag(name, options, "default"),
        slow=_flag(name, options, "slow"),
        soft_time_limit=_seconds(name, options, "soft_time_limit"),
        time_limit=_seconds(name, options, "time_limit"),
        prefetch_multiplier=_count(name, options, "prefetch_multiplier"),
        concurrency=_count(name, options, "concurrency"),
        queue_arguments=_arguments(name, options.get("queue_arguments")),
    )
    if spec.soft_time_limit and spec.time_limit and spec.soft_time_limit >= spec.time_limit:
        raise HygieneConfigurationError(
            f"{_where(name)}: soft_time_limit ({spec.soft_time_limit:g}) must be below time_limit "
            f"({spec.time_limit:g}), so the task gets a chance to clean up before it is killed."
        )
    return spec


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise HygieneConfigurationError(
            f"{_where(name, 'tasks')} must be a list of task names or globs, e.g. ['shop.*'], "
            f"got {value!r}."
        )
    if not all(isinstance(p, str) and p for p in value):
        raise HygieneConfigurationError(f"{_where(name, 'tasks')} must hold non-empty strings.")
    return tuple(value)


def _flag(name: str, options: dict[str, Any], key: str) -> bool:
    value = options.get(key, False)
    if not isinstance(value, bool):
        raise HygieneConfigurationError(
            f"{_where(name, key)} must be True or False, got {value!r}."
        )
    return value


def _seconds(name: str, options: dict[str, Any], key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise HygieneConfigurationError(
            f"{_where(name, key)} must be a positive number of seconds, got {value!r}."
        )
    return float(value)


def _count(name: str, options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HygieneConfigurationError(
            f"{_where(name, key)} must be a whole number >= 1, got {value!r}."
        )
    return value


def _arguments(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HygieneConfigurationError(
            f"{_where(name, 'queue_arguments')} must be a dict, e.g. {{'x-max-priority': 10}}."
        )
    return dict(value)


def _check_across(specs: dict[str, QueueSpec]) -> None:
    defaults = [spec.name for spec in specs.values() if spec.default]
    if len(defaults) > 1:
        raise HygieneConfigurationError(
            f"{SETTING}: only one queue can be the default, found {', '.join(map(repr, defaults))}."
        )
    owners: dict[str, str] = {}
    for spec in specs.values():
        for pattern in spec.tasks:
            if pattern in owners:
                raise HygieneConfigurationError(
                    f"{SETTING}: task pattern {pattern!r} is listed under both {owners[pattern]!r} "
                    f"and {spec.name!r}; a task must have one home queue."
                )
            owners[pattern] = spec.name


def raw_declaration(app: Any) -> Any:
    """The declaration from the Celery config, else straight from Django settings."""
    declared = app.conf.get("hygiene_queues")
    if declared is None:
        declared = getattr(settings, SETTING, None)
    return declared


_parsed: dict[int, tuple[Any, dict[str, QueueSpec]]] = {}


def declared_queues(app: Any) -> dict[str, QueueSpec]:
    """The app's validated queues ({} if none are declared); parsed once per declaration object."""
    declared = raw_declaration(app)
    if declared is None:
        return {}
    cached = _parsed.get(id(app))
    if cached is not None and cached[0] is declared:
        return cached[1]
    specs = parse_queues(declared)
    _parsed[id(app)] = (declared, specs)
    return specs


def build_routes(specs: dict[str, QueueSpec]) -> dict[str, dict[str, str]]:
    """``task_routes`` for the declaration: Celery matches exact names, then globs in order."""
    return {pattern: {"queue": spec.name} for spec in specs.values() for pattern in spec.tasks}


# Set on an app by configure_queues(): the explicit declaration, or REQUESTED (from the config).
_REQUEST_ATTR = "_celery_hygiene_configure_queues"
REQUESTED = object()


def configure_queues(
    app: Celery, declaration: QueueDeclaration | None = None
) -> dict[str, QueueSpec]:
    """Apply a declaration (default: the app's ``hygiene_queues``) to the app's config.

    Queues and routes already in the config are kept; declared ones are added after them, so a
    hand-written route still wins over a declared pattern.

    If the app's configuration is not loaded yet (the usual case in ``proj/celery.py``, right
    after ``config_from_object``), nothing is read now: the declaration is applied when Celery
    loads the configuration, and once more when the app is finalized (before a worker consumes
    or a producer looks up a task). Reading it now would load Django settings that may still
    be importing (a settings module that imports the Celery app), and a half-loaded settings
    module has no ``CELERY_HYGIENE_QUEUES`` yet: every task would go to the ``celery`` queue.
    Returns the applied queues, or ``{}`` while deferred.
    """
    if declaration is not None:
        parse_queues(declaration)  # an invalid declaration fails here, not in a signal handler
    setattr(app, _REQUEST_ATTR, REQUESTED if declaration is None else declaration)
    app.on_after_finalize.connect(_on_finalized, weak=False, dispatch_uid="hygiene_queues")
    if _django_settings_importing():
        return {}  # whatever Celery read so far is half a settings module: wait for finalize
    if not getattr(app, "configured", False):  # Celery's flag; celery-types does not know it
        app.on_after_configure.connect(_on_configured, weak=False, dispatch_uid="hygiene_queues")
        return {}
    return _apply(app, strict=True)


def _on_configured(sender: Any = None, **kwargs: Any) -> None:
    if sender is None or _django_settings_importing():
        return  # Celery read half a settings module; the finalize hook applies the rest
    _apply(sender, strict=False)


def _on_finalized(sender: Any = None, **kwargs: Any) -> None:
    if sender is not None:
        _apply(sender, strict=True)


def _django_settings_importing() -> bool:
    """True while the Django settings module is still executing (a circular import)."""
    module = sys.modules.get(os.environ.get("DJANGO_SETTINGS_MODULE") or "")
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def configure_requested(app: Any) -> bool:
    """Whether ``configure_queues`` was called for this app (the audit's E022 asks)."""
    return hasattr(app, _REQUEST_ATTR)


def _apply(app: Any, *, strict: bool) -> dict[str, QueueSpec]:
    requested = getattr(app, _REQUEST_ATTR, REQUESTED)
    if requested is not REQUESTED:
        app.conf.hygiene_queues = requested
    specs = declared_queues(app)
    if not specs:
        message = (
            f"configure_queues({app.main or 'app'}) found no {SETTING}: every task would go to "
            f"the default queue {app.conf.task_default_queue!r}. Define {SETTING} in the Django "
            "settings module Celery reads (config_from_object(..., namespace='CELERY')), or pass "
            "the declaration: configure_queues(app, {...})."
        )
        if strict:
            log_event(
                logging.ERROR, "configure_queues_found_nothing", app=app.main or "", detail=message
            )
            raise HygieneConfigurationError(message)
        return specs
    existing = [q for q in (app.conf.task_queues or ()) if q.name not in specs]
    _set_conf(app, "task_queues", [*existing, *(spec.kombu_queue() for spec in specs.values())])
    _set_conf(app, "task_routes", _merge_routes(app.conf.task_routes, build_routes(specs)))
    default = next((spec.name for spec in specs.values() if spec.default), None)
    if default is not None:
        _set_conf(app, "task_default_queue", default)
    _forget_cached_routing(app)
    return specs


def _set_conf(app: Any, key: str, value: Any) -> None:
    """Set a Celery setting so it wins over the same setting in Django settings.

    Celery before 5.7 looks the namespaced spelling (``CELERY_TASK_ROUTES``) up in every config
    layer before the plain one (``task_routes``), so a plain change loses to a Django setting of
    that name: set both spellings.
    """
    app.conf[key] = value
    namespace = getattr(app, "namespace", None)
    if namespace:
        app.conf[f"{namespace}_{key.upper()}"] = value


def _forget_cached_routing(app: Any) -> None:
    """Celery caches its router and queues on first use; make them read the new config."""
    amqp = app.__dict__.get("amqp")
    if amqp is None:
        return
    amqp._rtable = None
    for name in ("router", "queues"):
        amqp.__dict__.pop(name, None)


def _merge_routes(existing: Any, ours: dict[str, dict[str, str]]) -> Any:
    if not existing:
        return ours
    if isinstance(existing, dict):
        return {**existing, **{key: route for key, route in ours.items() if key not in existing}}
    routers = list(existing) if isinstance(existing, list | tuple) else [existing]
    return (*routers, ours)


def queue_of_delivery(app: Any, delivery_info: dict[str, Any] | None) -> QueueSpec | None:
    """The declared queue a message was delivered from (its routing key is the queue name)."""
    if not delivery_info:
        return None
    name = delivery_info.get("routing_key") or delivery_info.get("queue")
    return declared_queues(app).get(name) if name else None


def _tighter(own: float | None, queue: float | None) -> float | None:
    limits = [value for value in (own, queue) if value]
    return min(limits) if limits else None


def apply_queue_time_limits(app: Any, request: Any) -> None:
    """Bound a received request by its queue's limits; a no-op for unbounded queues."""
    spec = queue_of_delivery(app, request.delivery_info)
    if spec is None or not spec.bounded:
        return
    task = request.task
    hard, soft = tuple(request.time_limits or (None, None))
    hard = _tighter(hard or task.time_limit, spec.time_limit)
    soft = _tighter(soft or task.soft_time_limit, spec.soft_time_limit)
    request.time_limits = (hard, soft)
    # The task sees them too (task.request.timelimit), e.g. to size its claim lease.
    request.request_dict["timelimit"] = (hard, soft)
