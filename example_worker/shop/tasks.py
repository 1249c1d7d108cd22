"""The example's tasks: one per feature of celery-hygiene."""

import time

from celery_hygiene import RetryPolicy, hygienic_task, idempotent_task, singleton_task
from celery_hygiene.retry import wait_exponential_capped

from .models import Charge, PartnerCall, Receipt


@idempotent_task(entity="order_id", operation="charge", name="shop.charge_order", atomic=True)
def charge_order(order_id: int, amount_cents: int) -> dict:
    """Exactly once per order: the Charge row commits together with the claim."""
    Charge.objects.create(order_id=order_id, amount_cents=amount_cents)
    return {"order_id": order_id, "charged": amount_cents}


@idempotent_task(entity="order_id", name="shop.send_receipt")
def send_receipt(order_id: int) -> str:
    Receipt.objects.create(order_id=order_id)
    return f"receipt sent for order {order_id}"


@idempotent_task(
    entity="request_id",
    name="shop.call_partner",
    retry=RetryPolicy(
        max_attempts=3,
        wait=wait_exponential_capped(multiplier=1, max=4),
        retry_on=(ConnectionError,),
        give_up_on=(ValueError,),
        min_delay=1,
        max_delay=4,
    ),
)
def call_partner(request_id: str, succeed_on_attempt: int) -> str:
    """Fails with ConnectionError until the given attempt; past the cap it is dead-lettered."""
    PartnerCall.objects.create(request_id=request_id)
    if PartnerCall.objects.filter(request_id=request_id).count() < succeed_on_attempt:
        raise ConnectionError(f"partner API unreachable (request {request_id})")
    return f"partner accepted {request_id}"


# Not idempotent and safe to lose on a crash (the next run rebuilds it): acknowledge early, so a
# redelivery never builds it twice. Still gets the default retry policy and dead letters.
@hygienic_task(name="shop.build_report", expected_duration=2, acks_late=False)
def build_report(seconds: float) -> str:
    """Slow work lives on the slow queue; the watchdog flags runs over expected_duration."""
    time.sleep(seconds)
    return f"report built in {seconds}s"


# A periodic (beat) task: never two runs at once; a tick that finds one running is skipped.
@singleton_task(name="shop.refresh_rates", acks_late=True)
def refresh_rates(seconds: float) -> str:
    time.sleep(seconds)
    return "rates refreshed"
