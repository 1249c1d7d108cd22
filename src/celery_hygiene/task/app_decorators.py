"""``for_app(app)``: ``hygienic_task``, ``idempotent_task`` and ``singleton_task`` bound to one
Celery app, for an ``@app.task`` codebase, each typed like the module-level decorator
(``task/decorators.py``) without ``app=``, so a type checker sees ``HygieneTask[P, R]`` for a
task declared through it too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
)

from celery import Celery

from celery_hygiene.claims.spec import EntitySpec
from celery_hygiene.failures.retry import RetryPolicy
from celery_hygiene.task.decorators import hygienic_task, idempotent_task, singleton_task

if TYPE_CHECKING:  # at runtime imported late: proj/celery.py may import this before Django setup
    from celery_hygiene.task.hygiene_task import HygieneTask

_P = ParamSpec("_P")
_R = TypeVar("_R")

_RetryOption = RetryPolicy | dict[str, Any] | None


class AppHygienicTask(Protocol):
    """``hygienic_task`` bound to an app (``for_app(app).hygienic_task``)."""

    @overload
    def __call__(self, fun: Callable[_P, _R], /) -> HygieneTask[_P, _R]: ...
    @overload
    def __call__(
        self,
        *,
        bind: Literal[True],
        retry: _RetryOption = None,
        expected_duration: float | None = None,
        **options: Any,
    ) -> Callable[[Callable[Concatenate[Any, _P], _R]], HygieneTask[_P, _R]]: ...
    @overload
    def __call__(
        self,
        *,
        bind: Literal[False] = False,
        retry: _RetryOption = None,
        expected_duration: float | None = None,
        **options: Any,
    ) -> Callable[[Callable[_P, _R]], HygieneTask[_P, _R]]: ...


class AppIdempotentTask(Protocol):
    """``idempotent_task`` bound to an app (``for_app(app).idempotent_task``)."""

    @overload
    def __call__(
        self,
        *,
        entity: EntitySpec,
        operation: str | None = None,
        atomic: bool = False,
        lease_seconds: float | None = None,
        on_mismatch: Literal["warn", "raise"] = "warn",
        window: float | dt.timedelta | None = None,
        retry: _RetryOption = None,
        expected_duration: float | None = None,
        bind: Literal[True],
        **options: Any,
    ) -> Callable[[Callable[Concatenate[Any, _P], _R]], HygieneTask[_P, _R]]: ...
    @overload
    def __call__(
        self,
        *,
        entity: EntitySpec,
        operation: str | None = None,
        atomic: bool = False,
        lease_seconds: float | None = None,
        on_mismatch: Literal["warn", "raise"] = "warn",
        window: float | dt.timedelta | None = None,
        retry: _RetryOption = None,
        expected_duration: float | None = None,
        bind: Literal[False] = False,
        **options: Any,
    ) -> Callable[[Callable[_P, _R]], HygieneTask[_P, _R]]: ...


class AppSingletonTask(Protocol):
    """``singleton_task`` bound to an app (``for_app(app).singleton_task``)."""

    @overload
    def __call__(self, fun: Callable[_P, _R], /) -> HygieneTask[_P, _R]: ...
    @overload
    def __call__(
        self,
        *,
        key: EntitySpec | None = None,
        wait: bool = False,
        lease_seconds: float | None = None,
        retry: _RetryOption = None,
        expected_duration: float | None = None,
        bind: Literal[True],
        **options: Any,
    ) -> Callable[[Callable[Concatenate[Any, _P], _R]], HygieneTask[_P, _R]]: ...
    @overload
    def __call__(
        self,
        *,
        key: EntitySpec | None = None,
        wait: bool = False,
        lease_seconds: float | None = None,
        retry: _RetryOption = None,
        expected_duration: float | None = None,
        bind: Literal[False] = False,
        **options: Any,
    ) -> Callable[[Callable[_P, _R]], HygieneTask[_P, _R]]: ...


@dataclass(frozen=True)
class _BoundToApp:
    """One of the decorators with ``app=`` given."""

    decorator: Callable[..., Any]
    app: Celery

    def __call__(self, *args: Any, **options: Any) -> Any:
        return self.decorator(*args, app=self.app, **options)


class AppDecorators(tuple[AppHygienicTask, AppIdempotentTask]):
    """``hygienic_task``, ``idempotent_task`` and ``singleton_task`` bound to one Celery app
    (see ``for_app``). Unpacks as the first two: ``hygienic_task, idempotent_task = ...``."""

    app: Celery

    def __new__(cls, app: Celery) -> AppDecorators:
        bound = (
            cast(AppHygienicTask, _BoundToApp(hygienic_task, app)),
            cast(AppIdempotentTask, _BoundToApp(idempotent_task, app)),
        )
        self = super().__new__(cls, bound)
        self.app = app
        return self

    @property
    def hygienic_task(self) -> AppHygienicTask:
        return self[0]

    @property
    def idempotent_task(self) -> AppIdempotentTask:
        return self[1]

    @property
    def singleton_task(self) -> AppSingletonTask:
        return cast(AppSingletonTask, _BoundToApp(singleton_task, self.app))

    def __repr__(self) -> str:
        return f"AppDecorators(app={self.app!r})"


def for_app(app: Celery) -> AppDecorators:
    """Bind the decorators to ``app`` once, for an ``@app.task`` codebase.

    In ``proj/celery.py``: ``hygienic_task, idempotent_task = for_app(app)`` (and
    ``singleton_task = for_app(app).singleton_task``); task modules then import them from there
    (``from proj.celery import hygienic_task``). Each is typed like the module's own decorator,
    without ``app=``. This module imports
    neither the models nor the task class, so ``proj/celery.py`` may import it before Django's
    setup.
    """
    return AppDecorators(app)
