"""``@idempotent_task``, ``@singleton_task`` and ``@hygienic_task``: drop-in ``@shared_task``s.

Both accept every Celery task option (``bind``, ``queue``, ``name``, ``acks_late``, ...) and an
explicit ``app=`` to register on a specific Celery app instead of every app (``shared_task``);
``for_app(app)`` binds that once. Celery's retry options (``autoretry_for``, ``retry_backoff``,
``max_retries``, ...) are translated into the equivalent ``RetryPolicy`` (see
``retry.policy_from_celery_options``), so a task moves from ``@app.task`` without a rewrite.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, cast, overload

from celery import Celery, Task, shared_task

from celery_hygiene.claims.spec import EntitySpec, IdempotencySpec
from celery_hygiene.exceptions import HygieneConfigurationError
from celery_hygiene.failures.retry import (
    CELERY_RETRY_OPTIONS,
    RetryPolicy,
    coerce_policy,
    policy_from_celery_options,
)

if TYPE_CHECKING:  # at runtime imported late: proj/celery.py may import this before Django setup
    from celery_hygiene.task.hygiene_task import HygieneTask

# For type checkers a decorated task is a HygieneTask[P, R], typed the way celery-types types
# shared_task: delay and a direct call are checked against the function's parameters P, and
# delay/apply_async return AsyncResult[R]. With bind=True the first parameter (the task itself)
# is not part of P. Options beyond the named ones go through **options: Any.
_P = ParamSpec("_P")
_R = TypeVar("_R")


@overload
def hygienic_task(fun: Callable[_P, _R], /) -> HygieneTask[_P, _R]: ...
@overload
def hygienic_task(
    *,
    bind: Literal[True],
    retry: RetryPolicy | dict[str, Any] | None = None,
    expected_duration: float | None = None,
    app: Celery | None = None,
    **options: Any,
) -> Callable[[Callable[Concatenate[Any, _P], _R]], HygieneTask[_P, _R]]: ...
@overload
def hygienic_task(
    *,
    bind: Literal[False] = False,
    retry: RetryPolicy | dict[str, Any] | None = None,
    expected_duration: float | None = None,
    app: Celery | None = None,
    **options: Any,
) -> Callable[[Callable[_P, _R]], HygieneTask[_P, _R]]: ...
def hygienic_task(
    *args: Any,
    retry: RetryPolicy | dict[str, Any] | None = None,
    expected_duration: float | None = None,
    app: Celery | None = None,
    **options: Any,
) -> Any:
    """A Celery task with bounded retries and dead letters, without a claim.

    Usable bare (``@hygienic_task``) or with options (``@hygienic_task(retry=...)``).
    """
    if len(args) == 1 and callable(args[0]) and not options and retry is None:
        return hygienic_task(retry=None, expected_duration=expected_duration, app=app)(args[0])
    if args:
        raise TypeError("hygienic_task takes keyword options only")

    def decorate(fun: Callable[..., Any]) -> HygieneTask[Any, Any]:
        return _register(fun, app, options, retry=retry, expected_duration=expected_duration)

    return decorate


@overload
def idempotent_task(
    *,
    entity: EntitySpec,
    operation: str | None = None,
    atomic: bool = False,
    lease_seconds: float | None = None,
    on_mismatch: Literal["warn", "raise"] = "warn",
    window: float | dt.timedelta | None = None,
    retry: RetryPolicy | dict[str, Any] | None = None,
    expected_duration: float | None = None,
    app: Celery | None = None,
    bind: Literal[True],
    **options: Any,
) -> Callable[[Callable[Concatenate[Any, _P], _R]], HygieneTask[_P, _R]]: ...
@overload
def idempotent_task(
    *,
    entity: EntitySpec,
    operation: str | None = None,
    atomic: bool = False,
    lease_seconds: float | None = None,
    on_mismatch: Literal["warn", "raise"] = "warn",
    window: float | dt.timedelta | None = None,
    retry: RetryPolicy | dict[str, Any] | None = None,
    expected_duration: float | None = None,
    app: Celery | None = None,
    bind: Literal[False] = False,
    **options: Any,
) -> Callable[[Callable[_P, _R]], HygieneTask[_P, _R]]: ...
def idempotent_task(
    *,
    entity: EntitySpec,
    operation: str | None = None,
    atomic: bool = False,
    lease_seconds: float | None = None,
    on_mismatch: Literal["warn", "raise"] = "warn",
    window: float | dt.timedelta | None = None,
    retry: RetryPolicy | dict[str, Any] | None = None,
    expected_duration: float | None = None,
    app: Celery | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], HygieneTask[Any, Any]]:
    """A Celery task whose body runs once per ``(entity, operation)``, enforced by the database.

    - ``entity``: the name of a task parameter, or a callable receiving the task's arguments
      (as keywords) and returning the key.
    - ``operation``: defaults to the task's name.
    - ``atomic``: claim, body and completion commit in one transaction.
    - ``lease_seconds``: how long a claim stays blocked after its worker stops renewing it (the
      worker renews it while the body runs); defaults to ``DEFAULT_LEASE_SECONDS`` (60 s).
    - ``on_mismatch``: same key, different arguments: ``"warn"`` (skip and log) or ``"raise"``.
    - ``window``: recurring work (seconds or a timedelta). A succeeded claim blocks duplicates
      only for this long after it completed; then the key runs again. None: once, forever.
    """

    def decorate(fun: Callable[..., Any]) -> HygieneTask[Any, Any]:
        spec = IdempotencySpec.build(
            fun,
            entity=entity,
            operation=operation,
            atomic=atomic,
            lease_seconds=lease_seconds,
            on_mismatch=on_mismatch,
            bind=bool(options.get("bind", False)),
            window=window,
        )
        return _register(
            fun, app, options, retry=retry, expected_duration=expected_duration, idempotency=spec
        )

    return decorate


@overload
def singleton_task(fun: Callable[_P, _R], /) -> HygieneTask[_P, _R]: ...
@overload
def singleton_task(
    *,
    key: EntitySpec | None = None,
    wait: bool = False,
    lease_seconds: float | None = None,
    retry: RetryPolicy | dict[str, Any] | None = None,
    expected_duration: float | None = None,
    app: Celery | None = None,
    bind: Literal[True],
    **options: Any,
) -> Callable[[Callable[Concatenate[Any, _P], _R]], HygieneTask[_P, _R]]: ...
@overload
def singleton_task(
    *,
    key: EntitySpec | None = None,
    wait: bool = False,
    lease_seconds: float | None = None,
    retry: RetryPolicy | dict[str, Any] | None = None,
    expected_duration: float | None = None,
    app: Celery | None = None,
    bind: Literal[False] = False,
    **options: Any,
) -> Callable[[Callable[_P, _R]], HygieneTask[_P, _R]]: ...
def singleton_task(
    *args: Any,
    key: EntitySpec | None = None,
    wait: bool = False,
    lease_seconds: float | None = None,
    retry: RetryPolicy | dict[str, Any] | None = None,
    expected_duration: float | None = None,
    app: Celery | None = None,
    **options: Any,
) -> Any:
    """A Celery task of which at most one run is in flight per key (periodic tasks, sweeps).

    - ``key``: a parameter name or a callable receiving the task's arguments (as keywords);
      default: the task's name, i.e. one run of the task at a time.
    - ``wait``: a message that finds the key busy is skipped (``task_singleton_busy`` log event
      and signal) unless ``wait=True``, which re-checks later like a deferred duplicate.

    The claim table and heartbeat leases are the same as ``idempotent_task``'s: a crashed run's
    key frees itself within one lease. When a run ends (succeeded, dead-lettered, or
    ``NotFinished``) the key is free again. Retries of a run keep the key. Usable bare.
    """
    if len(args) == 1 and callable(args[0]) and not options:
        return singleton_task(
            key=key,
            wait=wait,
            lease_seconds=lease_seconds,
            retry=retry,
            expected_duration=expected_duration,
            app=app,
        )(args[0])
    if args:
        raise TypeError("singleton_task takes keyword options only")

    def decorate(fun: Callable[..., Any]) -> HygieneTask[Any, Any]:
        name = options.get("name") or f"{fun.__module__}.{fun.__qualname__}"
        spec = IdempotencySpec.build(
            fun,
            entity=key if key is not None else (lambda **_: name),
            operation=f"singleton:{name}",
            atomic=False,
            lease_seconds=lease_seconds,
            on_mismatch="warn",
            bind=bool(options.get("bind", False)),
            singleton=True,
            wait=wait,
        )
        return _register(
            fun, app, options, retry=retry, expected_duration=expected_duration, idempotency=spec
        )

    return decorate


def _register(
    fun: Callable[..., Any],
    app: Celery | None,
    options: dict[str, Any],
    *,
    retry: RetryPolicy | dict[str, Any] | None,
    expected_duration: float | None,
    idempotency: IdempotencySpec | None = None,
) -> HygieneTask[Any, Any]:
    name = f"{fun.__module__}.{fun.__qualname__}"
    options = dict(options)
    # Kept on the task for `taskhygiene check --tasks`: what plain Celery did with these options.
    celery_options = {key: options[key] for key in CELERY_RETRY_OPTIONS if key in options}
    policy = _policy(retry, options, options.get("name") or name)
    if expected_duration is not None and not expected_duration > 0:
        raise HygieneConfigurationError(
            f"{name}: expected_duration must be a positive number of seconds, "
            f"got {expected_duration!r}."
        )
    options["base"] = _hygienic_base(options.get("base") or _app_task_class(app), name)
    # "default": CELERY_HYGIENE["DEFAULT_RETRY_POLICY"], read when a failure asks for it. (A
    # task without any hygiene_retry keeps Celery's own retries: task_cls, base=.)
    options["hygiene_retry"] = policy if policy is not None else "default"
    options["hygiene_idempotency"] = idempotency
    options["hygiene_celery_options"] = celery_options
    options["expected_duration"] = expected_duration
    if policy is not None:
        # Celery's own counter agrees with the policy's cap, so audits and Flower see a bound,
        # and a body's own self.retry() raises MaxRetriesExceededError at the same point.
        options["max_retries"] = policy.max_attempts - 1
    register = app.task if app is not None else shared_task
    # options["base"] is a HygieneTask subclass: the task Celery builds is a HygieneTask.
    return cast("HygieneTask[Any, Any]", register(**options)(fun))


def _policy(
    retry: RetryPolicy | dict[str, Any] | None, options: dict[str, Any], name: str
) -> RetryPolicy | None:
    """The task's policy: ``retry=``, else one translated from Celery's retry options, else None.

    Celery's options are removed from ``options`` (Celery must not wrap the body in its own
    autoretry as well), except ``default_retry_delay``: it stays the countdown of a body's own
    ``self.retry()`` without one, as in Celery.
    """
    celery_options = {key: options.pop(key) for key in CELERY_RETRY_OPTIONS if key in options}
    if retry is not None and celery_options:
        raise HygieneConfigurationError(
            f"{name}: retry= and Celery's retry options ({', '.join(sorted(celery_options))}) "
            "both set the retry policy. Keep one: retry=RetryPolicy(...), or Celery's options "
            "alone (translated into the same RetryPolicy; see docs/retries-and-dead-letters.md)."
        )
    if retry is not None:
        return coerce_policy(retry)
    if not celery_options:
        return None
    if "default_retry_delay" in celery_options:
        options["default_retry_delay"] = celery_options["default_retry_delay"]
    return policy_from_celery_options(celery_options, where=name)


def _app_task_class(app: Celery | None) -> type[Task[Any, Any]] | None:
    """The app's own task class when it is already hygienic (``Celery(task_cls=...)``).

    So a project base class set as ``task_cls`` is kept on tasks declared with our decorators
    too; any other app task class is left alone, as before.
    """
    if app is None:
        return None
    from celery_hygiene.task.hygiene_task import HygieneTask

    task_cls = app.Task
    return task_cls if issubclass(task_cls, HygieneTask) else None


def _hygienic_base(base: type[Task[Any, Any]] | None, name: str) -> type[Task[Any, Any]]:
    # Imported here, not at the top: proj/celery.py imports this module (for_app) before
    # Django's app registry is ready, and task/hygiene_task.py imports the models.
    from celery_hygiene.task.hygiene_task import HygieneTask

    if base is None:
        return HygieneTask
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise HygieneConfigurationError(
            f"{name}: base must be a celery.Task subclass, got {base!r}."
        )
    if issubclass(base, HygieneTask):
        return base
    # Keep the user's base (its hooks and defaults) and put ours in front of it.
    return type(f"Hygienic{base.__name__}", (HygieneTask, base), {"__module__": base.__module__})


# ``for_app`` (these decorators bound to one app, typed like them) is its own module; imported
# last, as it uses the decorators above.
from celery_hygiene.task.app_decorators import AppDecorators, for_app  # noqa: E402

__all__ = [
    "AppDecorators",
    "for_app",
    "hygienic_task",
    "idempotent_task",
    "singleton_task",
]
