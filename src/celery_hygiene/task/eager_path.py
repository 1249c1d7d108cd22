"""The eager path (``task_always_eager``, users' unit tests): no broker to retry through or
redeliver from.

Claims are still enforced against the database, so a user's test that sends a task twice sees
one run and the stored result; a failure releases the claim and propagates like a plain eager
task, without retries or dead letters.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from django.db import transaction

from celery_hygiene.claims import state as claims
from celery_hygiene.claims.state import Outcome
from celery_hygiene.exceptions import ClaimBusy, NotFinished
from celery_hygiene.task import claiming

if TYPE_CHECKING:
    from celery_hygiene.task.hygiene_task import HygieneTask

    AnyTask = HygieneTask[Any, Any]


def run(task: AnyTask, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    spec = task.hygiene_idempotency
    if spec is None:
        return task.run(*args, **kwargs)
    key = task._claim_key(spec, args, kwargs)
    using = claims.write_alias()
    with transaction.atomic(using=using) if spec.atomic else nullcontext():
        claim = claiming.acquire(task, key, using=using)
        if claim.outcome is Outcome.ACQUIRED:
            ticket = claim.ticket
            assert ticket is not None
            try:
                value = task.run(*args, **kwargs)
            except NotFinished as not_finished:
                return claiming.not_finished(task, ticket, not_finished)
            except BaseException:
                if not spec.atomic:
                    # No retry will come in eager mode: the key is free again at once, so
                    # the developer's next call (after a fix) runs the body.
                    claiming.release(ticket, retry_in=None)
                raise
            task._complete(ticket, value)
            return value
    if spec.singleton and not spec.wait:
        return claiming.singleton_busy(task, key)
    if claim.existing is not None and claim.existing.fingerprint != key.fingerprint:
        claiming.mismatch(task, spec, key, claim.existing)
        return None
    if claim.outcome is Outcome.IN_PROGRESS:
        raise ClaimBusy(
            f"{task.name}: ({key.entity!r}, {key.operation!r}) is claimed by "
            f"{claim.existing.owner_task_id if claim.existing else 'another run'} and eager "
            "mode cannot wait for it. Clear claims between tests "
            "(celery_hygiene.testing.clear_claims)."
        )
    assert claim.existing is not None
    claiming.duplicate(task, key, claim.existing)
    return (
        claiming.load_result(claim.existing.result_json)
        if claim.outcome is Outcome.SUCCEEDED
        else None
    )
