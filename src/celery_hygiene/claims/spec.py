"""What makes two messages "the same work": the entity key, the operation, the arguments.

Validated once at decoration time, so a typo in ``entity=`` fails at import, not at 3 a.m.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from celery_hygiene.claims.keys import fingerprint, normalize_key
from celery_hygiene.conf import LEASE_TICK_SECONDS, MIN_LEASE_SECONDS
from celery_hygiene.exceptions import EntityKeyError, HygieneConfigurationError

EntitySpec = str | Callable[..., Any]
Mismatch = Literal["warn", "raise"]


@dataclass(frozen=True)
class IdempotencySpec:
    entity: EntitySpec
    operation: str | None
    atomic: bool
    lease_seconds: float | None
    on_mismatch: Mismatch
    signature: inspect.Signature
    function_name: str
    # Recurring work: a succeeded claim blocks duplicates for this many seconds after it
    # completed, then the key can run again (None: forever).
    window: float | None = None
    # @singleton_task: at most one run in flight per key; finished (or dead) runs free the key,
    # arguments are not compared, and a busy key skips the message unless ``wait``.
    singleton: bool = False
    wait: bool = False
    # The signature's parameters when it binds without inspect (see _plain_parameters).
    plain: tuple[tuple[str, Any, bool], ...] | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain", _plain_parameters(self.signature))

    @classmethod
    def build(
        cls,
        fun: Callable[..., Any],
        *,
        entity: EntitySpec,
        operation: str | None,
        atomic: bool,
        lease_seconds: float | None,
        on_mismatch: str,
        bind: bool,
        window: float | dt.timedelta | None = None,
        singleton: bool = False,
        wait: bool = False,
    ) -> IdempotencySpec:
        name = f"{fun.__module__}.{fun.__qualname__}"
        signature = _task_signature(fun, bind)
        _validate_entity(entity, signature, name)
        if on_mismatch not in ("warn", "raise"):
            raise HygieneConfigurationError(
                f"{name}: on_mismatch must be 'warn' or 'raise', got {on_mismatch!r}."
            )
        if lease_seconds is not None and not lease_seconds > 0:
            raise HygieneConfigurationError(
                f"{name}: lease_seconds must be a positive number of seconds, "
                f"got {lease_seconds!r}."
            )
        if lease_seconds is not None and lease_seconds < MIN_LEASE_SECONDS:
            raise HygieneConfigurationError(
                f"{name}: lease_seconds={lease_seconds!r} is shorter than {MIN_LEASE_SECONDS:g} s; "
                f"the worker renews leases on a {LEASE_TICK_SECONDS:g} s tick when a third has "
                "passed, so it would lapse while its owner is alive. Use a longer lease: it "
                "only bounds how long a crashed owner's claim stays blocked."
            )
        if operation is not None and (not isinstance(operation, str) or not operation.strip()):
            raise HygieneConfigurationError(f"{name}: operation must be a non-empty string.")
        seconds = window.total_seconds() if isinstance(window, dt.timedelta) else window
        if seconds is not None and (isinstance(seconds, bool) or not seconds >= 0):
            raise HygieneConfigurationError(
                f"{name}: window must be a number of seconds >= 0 or a timedelta, got {window!r}."
            )
        return cls(
            entity,
            operation,
            atomic,
            lease_seconds,
            on_mismatch,  # type: ignore[arg-type]  # checked above
            signature,
            name,
            window=None if seconds is None else float(seconds),
            singleton=singleton,
            wait=wait,
        )

    def bind_arguments(
        self, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if self.plain is not None:  # the common signature: bound without inspect (per task)
            bound_fast = _bind_plain(self.plain, args, kwargs)
            if bound_fast is not None:
                return bound_fast
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise EntityKeyError(
                f"{task_name}: arguments do not fit the task signature: {exc}"
            ) from exc
        bound.apply_defaults()
        return dict(bound.arguments)

    def entity_key(self, task_name: str, arguments: dict[str, Any]) -> str:
        """The normalized entity key, or EntityKeyError naming the task and the problem."""
        if callable(self.entity):
            try:
                raw = self.entity(**arguments)
            except Exception as exc:
                raise EntityKeyError(
                    f"{task_name}: the entity callable raised {type(exc).__name__}: {exc}; "
                    "the task body was not run."
                ) from exc
        else:
            raw = _lookup(arguments, self.entity, self.signature)
            if raw is _MISSING:
                raise EntityKeyError(
                    f"{task_name}: entity parameter {self.entity!r} was not passed; "
                    "the task body was not run."
                )
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise EntityKeyError(
                f"{task_name}: the entity key is empty ({raw!r}); the task body was not run. "
                "Return a non-empty string or number that identifies the business object."
            )
        return normalize_key(str(raw))

    def operation_name(self, task_name: str) -> str:
        return normalize_key(self.operation or task_name)

    def fingerprint(self, arguments: dict[str, Any]) -> str:
        return fingerprint(arguments)


_MISSING = object()
_PLAIN_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _plain_parameters(signature: inspect.Signature) -> tuple[tuple[str, Any, bool], ...] | None:
    """(name, default, positional) per parameter when none is ``*args``, ``**kwargs`` or
    positional-only; None otherwise (those go through ``Signature.bind``)."""
    if any(p.kind not in _PLAIN_KINDS for p in signature.parameters.values()):
        return None
    return tuple(
        (p.name, p.default, p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for p in signature.parameters.values()
    )


def _bind_plain(
    parameters: tuple[tuple[str, Any, bool], ...], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    """What ``Signature.bind(..).apply_defaults()`` gives, for plain signatures; None when the
    call does not fit (``Signature.bind`` then raises the error message users see)."""
    if len(args) > len(parameters) or not all(
        positional for _, _, positional in parameters[: len(args)]
    ):
        return None
    arguments: dict[str, Any] = {}
    used = 0
    for index, (name, default, _) in enumerate(parameters):
        if index < len(args):
            if name in kwargs:
                return None
            arguments[name] = args[index]
        elif name in kwargs:
            arguments[name] = kwargs[name]
            used += 1
        elif default is inspect.Parameter.empty:
            return None
        else:
            arguments[name] = default
    return arguments if used == len(kwargs) else None


def _lookup(arguments: dict[str, Any], name: str, signature: inspect.Signature) -> Any:
    """The named parameter, or the same name passed through the task's ``**kwargs``.

    Only the ``**kwargs`` catch-all is searched: a dict-valued parameter that happens to hold
    the same key is the task's data, not its entity.
    """
    if name in arguments:
        return arguments[name]
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return arguments.get(param.name, {}).get(name, _MISSING)
    return _MISSING


def _task_signature(fun: Callable[..., Any], bind: bool) -> inspect.Signature:
    signature = inspect.signature(fun)
    if bind:  # Celery passes the task itself first; it is not part of the message
        params = list(signature.parameters.values())[1:]
        signature = signature.replace(parameters=params)
    return signature


def _validate_entity(entity: EntitySpec, signature: inspect.Signature, name: str) -> None:
    if callable(entity):
        return
    if not isinstance(entity, str) or not entity:
        raise HygieneConfigurationError(
            f"{name}: entity must be a parameter name or a callable, got {entity!r}."
        )
    params = signature.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if entity not in params and not accepts_any:
        raise HygieneConfigurationError(
            f"{name}: entity={entity!r} names no parameter of the task; "
            f"parameters are: {', '.join(params) or '(none)'}."
        )
