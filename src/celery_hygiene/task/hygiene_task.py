"""The Celery glue: a Task base class that applies claims, the retry policy and dead letters.

``HygieneTask.__call__`` dispatches each message to one path, each in its own module of this
room, the way a worker's steps or a broker's middleware are each one small piece:

- ``plain_path``: a task without a claim;
- ``claim_path``: an idempotent task (claim, body, completion), ``atomic_path`` its variant in
  one transaction, ``eager_path`` both in eager mode (users' tests);
- ``claiming``: the claim steps those share; ``failure``: retry or dead letter after a failed
  body; ``follow_up``: deferral, re-sends while the database is away, a body's own retry;
- ``lost_runs``: runs the pool lost, reported in the worker's main process;
- ``handover``: amortized completion's pool-process side and the acks-late Request.

The claim core is ``claims/``, the retry policy and dead letters ``failures/``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

from celery import Task
from celery.exceptions import Ignore

from celery_hygiene import conf
from celery_hygiene.claims.spec import IdempotencySpec
from celery_hygiene.claims.state import ClaimKey, Ticket
from celery_hygiene.exceptions import EntityKeyError, HygieneConfigurationError, IdempotencyConflict
from celery_hygiene.failures import outbox
from celery_hygiene.failures.retry import (
    DEFAULT_POLICY,
    CeleryRetries,
    RetryPolicy,
    celery_retries,
    coerce_policy,
)
from celery_hygiene.models import DeadLetterReason
from celery_hygiene.task import (
    atomic_path,
    claim_path,
    claiming,
    eager_path,
    failure,
    follow_up,
    lost_runs,
    plain_path,
)
from celery_hygiene.task.enqueue import OnCommitMixin, task_id_spec

# The names this module held before its paths moved out (kept importable from here).
from celery_hygiene.task.follow_up import FIRST_DEFER_SECONDS
from celery_hygiene.task.headers import (
    CLAIM_TRIES_HEADER,
    CLAIM_WAIT_HEADER,
    DEFERS_HEADER,
    FIRST_FAILED_HEADER,
    FIRST_STARTED_HEADER,
    RETRY_TOKEN_HEADER,
)

__all__ = [
    "CLAIM_TRIES_HEADER",
    "CLAIM_WAIT_HEADER",
    "DEFERS_HEADER",
    "FIRST_DEFER_SECONDS",
    "FIRST_FAILED_HEADER",
    "FIRST_STARTED_HEADER",
    "RETRY_TOKEN_HEADER",
    "HygieneTask",
    "default_policy",
]

_P = ParamSpec("_P")
_R_co = TypeVar("_R_co", covariant=True)

# celery-types makes Task generic in the task's parameters and return value (Task[P, R]), which
# is what keeps a decorated task's signature. celery's own Task is subscriptable only from 5.7
# on, so at runtime HygieneTask's base is plain celery.Task, whatever the celery version.
if TYPE_CHECKING:
    _TaskBase = Task
else:

    class _TaskBase:
        def __class_getitem__(cls, params: object) -> type[Task]:
            return Task


class HygieneTask(OnCommitMixin, _TaskBase[_P, _R_co]):
    """Base class for tasks with bounded retries and dead letters (and claims, if idempotent).

    Use it directly (``@app.task(base=HygieneTask)``, ``Celery(task_cls=...)``) or through the
    ``hygienic_task`` and ``idempotent_task`` decorators. Class attributes, set by the decorators
    (or as task options, ``@app.task(hygiene_retry=...)``):

    - ``hygiene_retry``: the retry policy the task chose: a RetryPolicy (or a dict of its
      arguments), or ``"default"`` for ``CELERY_HYGIENE["DEFAULT_RETRY_POLICY"]`` (what the
      decorators set without ``retry=`` or Celery options). None (no choice, e.g. every task of
      a ``task_cls`` app): Celery's own retries for this task, unchanged (``celery_retries``).
    - ``hygiene_idempotency``: an IdempotencySpec, or None for tasks without a claim.
    - ``expected_duration``: seconds before the duration watchdog flags a run (None: default).
    """

    hygiene_retry: RetryPolicy | dict[str, Any] | Literal["default"] | None = None
    hygiene_idempotency: IdempotencySpec | None = None
    expected_duration: float | None = None
    # The Celery retry options a decorator translated (and removed), for the dry-run view.
    hygiene_celery_options: dict[str, Any] | None = None
    # Celery's Request, except that with AMORTIZED_COMPLETION an acks-late message waits for its
    # batched completion before it is acknowledged (task/handover.py). Unchanged behaviour
    # otherwise.
    Request = "celery_hygiene.task.handover:HygieneRequest"

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co:
        request = self.request
        if request.called_directly:  # a plain function call, like any Celery task
            return super().__call__(*args, **kwargs)
        # In a worker the value is what the result backend stores (for a skipped duplicate,
        # the first run's result or None); callers see it as the body's return type, as they
        # do for any Celery task.
        if request.is_eager:
            return cast(_R_co, eager_path.run(self, args, kwargs))
        if not outbox.take(request, self.name):
            # A second copy of a message re-sent from the outbox: another copy has run it. Ignore
            # leaves the result that copy stored alone.
            raise Ignore()
        spec = self.hygiene_idempotency or task_id_spec(self)  # enqueue.py: an intent's run
        if spec is None:
            return cast(_R_co, plain_path.run(self, args, kwargs))
        try:
            key = self._claim_key(spec, args, kwargs)
            path = atomic_path if spec.atomic else claim_path
            return cast(_R_co, path.run(self, spec, key, args, kwargs))
        except (EntityKeyError, IdempotencyConflict) as exc:
            # The message cannot run as sent; keep it where an operator will see it.
            failure.dead_letter(
                self,
                exc,
                reason=DeadLetterReason.GAVE_UP,
                attempts=self.request.retries + 1,
                ticket=None,
                key=None,
            )
            raise

    # -- policy and context --------------------------------------------------------------

    def hygiene_policy(self) -> RetryPolicy:
        """The policy asked after a failure; Celery's own retries if the task chose none."""
        chosen = self.hygiene_retry
        if chosen is None:
            return self.celery_retries().policy
        if isinstance(chosen, str):
            if chosen != "default":
                raise HygieneConfigurationError(
                    f"{self.name}: hygiene_retry={chosen!r}: use a RetryPolicy, a dict of its "
                    "arguments, \"default\" (CELERY_HYGIENE['DEFAULT_RETRY_POLICY']), or None "
                    "(Celery's own retries)."
                )
            return default_policy()
        return coerce_policy(chosen)

    def celery_retries(self) -> CeleryRetries:
        """How Celery would retry this task (its autoretry options, ``max_retries``) as a policy:
        what a task without ``hygiene_retry`` keeps. ``max_retries=None`` is held to the default
        policy's ``max_attempts``."""
        return celery_retries(self, forever_attempts=default_policy().max_attempts)

    def _retry_cap(self) -> int:
        """The ``max_retries`` a body's own ``self.retry()`` is held to."""
        if self.hygiene_retry is None:
            return self.celery_retries().retry_cap
        return self.hygiene_policy().max_attempts - 1

    def _body(self) -> Callable[..., Any]:
        """The task's own ``run``. Celery wraps ``run`` in its autoretry for a task with
        ``autoretry_for`` that reached it unchanged (``task_cls``, ``base=``); in a worker the
        policy retries instead (same attempts and delays, plus parking and attempt counting).
        Eager mode keeps Celery's wrapper: there, retries run in place as Celery runs them."""
        original = self.__dict__.get("_orig_run")
        return cast("Callable[..., Any]", original) if original is not None else self.run

    def hygiene_lease_seconds(self) -> float:
        """The claim lease: ``lease_seconds=``, else ``DEFAULT_LEASE_SECONDS``.

        Independent of time limits: the worker renews the lease while the body runs (see
        ``worker/leases.py``), so it only bounds how long a dead owner's claim stays blocked.
        """
        spec = self.hygiene_idempotency
        if spec is not None and spec.lease_seconds is not None:
            return float(spec.lease_seconds)
        return float(conf.get("DEFAULT_LEASE_SECONDS"))

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """``self.retry()`` from a body, published like the library's own retries.

        The retry message keeps the request's headers (replay origin, first-failed and
        first-started times: the policy's deadlines) and carries the claim's retry token. A
        publish the broker refuses parks the message in the outbox (Celery's own retry would
        reject the delivery and lose the work). Past ``max_retries`` the exception Celery
        raises is marked "exhausted" (not "gave up"). Without an explicit ``max_retries`` it is
        held to the task's cap: Celery's own for a task that keeps Celery's retries
        (``max_retries=None`` bounded), else the policy's.
        """
        return follow_up.body_retry(self, super().retry, args, kwargs)

    # -- the hooks the paths call back (subclasses and tests use them) -----------------------

    def _claim_key(
        self, spec: IdempotencySpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> ClaimKey:
        return claiming.claim_key(self, spec, args, kwargs)

    def _complete(self, ticket: Ticket, value: Any) -> None:
        """Record the body's success on its claim (a subclass may wrap it)."""
        claiming.complete(self, ticket, value)

    # -- failures reported in the worker's main process (lost_runs) -------------------------

    def dead_letter_from_parent(
        self, task_id: str, exc: BaseException, args: Any, kwargs: Any
    ) -> None:
        """Dead-letter a run that the pool lost (hard time limit, lost worker without requeue)."""
        lost_runs.dead_letter_from_parent(self, task_id, exc, args, kwargs)

    def release_lost_lease(self, task_id: str, args: Any, kwargs: Any, worker: str) -> None:
        """The process running this body died and Celery requeued the message: free the claim
        now, so the redelivery takes it over at once instead of after the lease."""
        lost_runs.release_lost_lease(self, task_id, args, kwargs, worker)

    def claim_key_or_none(self, args: Any, kwargs: Any) -> ClaimKey | None:
        """The claim key of a message, or None (no claim, or arguments that do not bind)."""
        return lost_runs.claim_key_or_none(self, args, kwargs)


def default_policy() -> RetryPolicy:
    """``CELERY_HYGIENE["DEFAULT_RETRY_POLICY"]``, else ``RetryPolicy(max_attempts=5)``."""
    configured = conf.get("DEFAULT_RETRY_POLICY")
    return DEFAULT_POLICY if configured is None else coerce_policy(configured)
