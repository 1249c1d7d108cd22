"""Type-checked by mypy (``make typecheck``), never run or collected by pytest.

What a user's type checker sees for decorated tasks. Lines ending in ``# type: ignore[code]``
must fail with exactly that error code: with ``warn_unused_ignores`` (set for this file below,
and project-wide in pyproject.toml) mypy reports an ignore that suppresses nothing, so a
decorator that stopped checking arguments fails the type check. ``ignore-without-code`` keeps
every expected failure specific.
"""

# mypy: warn-unused-ignores, enable-error-code="ignore-without-code"

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, assert_type

from celery import Celery, Task
from celery.result import AsyncResult

from celery_hygiene import (
    HygieneTask,
    RetryPolicy,
    hygienic_task,
    idempotent_task,
    singleton_task,
)

app = Celery("typecheck")


@idempotent_task(entity="order_id", retry=RetryPolicy(max_attempts=5), queue="payments")
def charge_order(order_id: str, amount_cents: int) -> bool:
    return amount_cents > 0


@idempotent_task(entity="report_id", bind=True, atomic=True, app=app)
def build_report(self: Task[Any, Any], report_id: int, *, full: bool = False) -> str:
    return f"{self.name}:{report_id}:{full}"


@hygienic_task
def ping(host: str) -> float:
    return 0.0


@hygienic_task(retry={"max_attempts": 3}, expected_duration=30)
def notify(user_id: int, message: str = "") -> None:
    return None


@hygienic_task(bind=True)
def sync_partner(self: HygieneTask[Any, Any], partner_id: int) -> list[str]:
    return [self.name, str(partner_id)]


# -- the decorated object keeps the function's parameters and return type ----------------------

# (Assignments rather than assert_type: the inferred parameters also carry their names.)
charge_order_t: HygieneTask[[str, int], bool] = charge_order
build_report_t: HygieneTask[[int], str] = build_report  # bind=True: the task is not a parameter
ping_t: HygieneTask[[str], float] = ping
notify_t: HygieneTask[[int], None] = notify
sync_partner_t: HygieneTask[[int], list[str]] = sync_partner
any_task: HygieneTask[..., Any] = charge_order
plain_task: Task[[str, int], bool] = charge_order  # still a celery Task, as celery-types types it

wrong_params: HygieneTask[[int, int], bool] = charge_order  # type: ignore[assignment]
wrong_result: HygieneTask[[str, int], str] = charge_order  # type: ignore[assignment]
bound_wrong: HygieneTask[[Any, int], str] = build_report  # type: ignore[assignment]

# -- delay: checked against the signature, returns AsyncResult[R] --------------------------------

assert_type(charge_order.delay("o-1", 100), AsyncResult[bool])
assert_type(charge_order.delay("o-1", amount_cents=100), AsyncResult[bool])
assert_type(build_report.delay(7, full=True), AsyncResult[str])
assert_type(ping.delay("db-1"), AsyncResult[float])
assert_type(notify.delay(1), AsyncResult[None])
assert_type(sync_partner.delay(3), AsyncResult[list[str]])
assert_type(charge_order.delay("o-1", 100).get(timeout=1), bool)

charge_order.delay("o-1", "not-an-int")  # type: ignore[arg-type]
charge_order.delay()  # type: ignore[call-arg]
charge_order.delay("o-1")  # type: ignore[call-arg]
charge_order.delay("o-1", 100, 5)  # type: ignore[call-arg]
charge_order.delay("o-1", amount=100)  # type: ignore[call-arg]
build_report.delay("seven")  # type: ignore[arg-type]
build_report.delay(7, True)  # type: ignore[call-arg]
build_report.delay(build_report)  # type: ignore[arg-type]
ping.delay(1)  # type: ignore[arg-type]
notify.delay(message="hi")  # type: ignore[call-arg]
sync_partner.delay()  # type: ignore[call-arg]
flag: str = charge_order.delay("o-1", 100).get()  # type: ignore[assignment]

# -- a direct call runs the body: same parameters, the body's return type ------------------------

assert_type(charge_order("o-1", 100), bool)
assert_type(build_report(7), str)
assert_type(ping("db-1"), float)
assert_type(sync_partner(3), list[str])

charge_order("o-1")  # type: ignore[call-arg]
charge_order("o-1", "100")  # type: ignore[arg-type]
ping()  # type: ignore[call-arg]
label: str = charge_order("o-1", 100)  # type: ignore[assignment]

# -- apply_async and signatures -----------------------------------------------------------------
# apply_async takes args as a plain tuple (Python's type system cannot tie a tuple to the
# function's parameters, in celery-types either): its options and its result are checked.
# ``si`` is checked against the parameters, like delay.

assert_type(charge_order.apply_async(args=("o-1", 100), countdown=5), AsyncResult[bool])
assert_type(build_report.apply_async(kwargs={"report_id": 7}), AsyncResult[str])
charge_order.apply_async(args=("o-1", 100), countdown="soon")  # type: ignore[arg-type]
charge_order.apply_async(args=("o-1", 100), not_an_option=1)  # type: ignore[call-arg]
charge_order.si("o-1", 100).apply_async(countdown=5)
charge_order.si("o-1", "100")  # type: ignore[arg-type]

# -- the hygiene attributes are there, typed ------------------------------------------------------

assert_type(
    charge_order.hygiene_retry, RetryPolicy | dict[str, Any] | Literal["default"] | None
)
assert_type(charge_order.expected_duration, float | None)
assert_type(charge_order.hygiene_policy().max_attempts, int)

# -- decorator options ---------------------------------------------------------------------------

hygienic_task(app="not-an-app")  # type: ignore[call-overload]
hygienic_task(retry=3)  # type: ignore[call-overload]
hygienic_task(expected_duration="30s")  # type: ignore[call-overload]
idempotent_task(operation="charge")  # type: ignore[call-overload]
idempotent_task(entity="order_id", atomic="yes")  # type: ignore[call-overload]
hygienic_task("ping")  # type: ignore[call-overload]
RetryPolicy(max_attempts="3")  # type: ignore[arg-type]
RetryPolicy(max_attempts=3, max_delay="1h")  # type: ignore[arg-type]
idempotent_task(entity="order_id", on_mismatch="ignore")  # type: ignore[call-overload]

# -- singleton_task: same typing, bare or with options ---------------------------------------------


@singleton_task
def sweep_outbox() -> int:
    return 0


@singleton_task(key="tenant_id", wait=True, bind=True)
def rebuild_index(self: Task[Any, Any], tenant_id: int) -> None:
    return None


sweep_outbox_t: HygieneTask[[], int] = sweep_outbox
rebuild_index_t: HygieneTask[[int], None] = rebuild_index
assert_type(sweep_outbox.delay(), AsyncResult[int])
assert_type(rebuild_index.delay(tenant_id=3), AsyncResult[None])
sweep_outbox.delay(1)  # type: ignore[call-arg]
rebuild_index.delay("3")  # type: ignore[arg-type]
singleton_task(wait="yes")  # type: ignore[call-overload]
idempotent_task(entity="day", window=dt.timedelta(days=1))
idempotent_task(entity="day", window="1d")  # type: ignore[call-overload]
