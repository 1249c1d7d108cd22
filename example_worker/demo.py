"""End-to-end tour of celery-hygiene against the running example workers.

Run by run_demo.sh after the fast, slow and bounded workers are up. Every step checks what it
shows and the script exits non-zero if anything is off, so it doubles as a smoke test.
"""

import os
import sys
import time
import uuid
from io import StringIO
from pathlib import Path

# Run as a script, this folder would be sys.path[0] and its celery.py would shadow Celery.
sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_worker.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from celery_hygiene.models import DeadLetter, TaskClaim  # noqa: E402
from example_worker.shop import tasks  # noqa: E402
from example_worker.shop.models import Charge, PartnerCall  # noqa: E402

RUN = uuid.uuid4().int % 1_000_000  # fresh business keys on every run


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def check(condition: bool, message: str) -> None:
    print(("  ok   " if condition else "  FAIL ") + message, flush=True)
    if not condition:
        sys.exit(1)


def command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    text = out.getvalue()
    print("  $ manage.py " + " ".join(args))
    print("\n".join("    " + line for line in text.rstrip().splitlines()[:25]), flush=True)
    return text


def exactly_once() -> None:
    step("1. @idempotent_task: three deliveries of one order, one charge")
    order = RUN
    results = [tasks.charge_order.delay(order, 2500) for _ in range(3)]
    values = [r.get(timeout=60) for r in results]
    print(f"  results: {values}")
    check(
        all(v == {"order_id": order, "charged": 2500} for v in values),
        "every caller got the result",
    )
    check(Charge.objects.filter(order_id=order).count() == 1, "exactly one Charge row")
    claim = TaskClaim.objects.get(entity=str(order), operation="charge")
    check(
        claim.status == "succeeded", f"claim ({claim.entity}, {claim.operation}) is {claim.status}"
    )


def retries_then_dead_letter() -> DeadLetter:
    step("2. Bounded retries: a flaky partner succeeds on attempt 2")
    ok = tasks.call_partner.delay(f"ok-{RUN}", 2)
    check(ok.get(timeout=60) == f"partner accepted ok-{RUN}", "succeeded after one retry")
    check(PartnerCall.objects.filter(request_id=f"ok-{RUN}").count() == 2, "two attempts, no sleep")

    step("3. Dead letter: a partner down for 3 attempts (the cap) is stored, not dropped")
    down = tasks.call_partner.delay(f"down-{RUN}", 4)
    try:
        down.get(timeout=60)
    except ConnectionError as exc:
        print(f"  the task failed: {exc!r}")
    deadline = time.monotonic() + 30
    while not DeadLetter.objects.filter(task_id=down.id).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    dead = DeadLetter.objects.get(task_id=down.id)
    check(dead.attempts == 3 and dead.reason == "exhausted", "dead-lettered after 3 attempts")
    command("deadletter", "list", "--task", "shop.call_partner", "--limit", "5")
    command("deadletter", "show", str(dead.pk))
    return dead


def replay(dead: DeadLetter) -> None:
    step("4. Replay: the partner is back; the dead letter is sent again and succeeds")
    command("deadletter", "replay", str(dead.pk))
    dead.refresh_from_db()
    check(dead.status == "replayed" and bool(dead.replayed_task_id), "status replayed, new task id")
    from celery.result import AsyncResult

    value = AsyncResult(dead.replayed_task_id).get(timeout=60)
    check(value == f"partner accepted down-{RUN}", f"the replay ran: {value!r}")


def separate_rooms() -> None:
    step("5. Per-queue pools: a busy slow queue does not delay fast work; the watchdog flags")
    slow = [tasks.build_report.delay(3.5) for _ in range(2)]  # slow worker runs one at a time
    time.sleep(0.5)
    started = time.monotonic()
    receipt = tasks.send_receipt.delay(RUN)
    print(f"  {receipt.get(timeout=30)}")
    waited = time.monotonic() - started
    check(waited < 2.0, f"fast task done in {waited:.2f}s while the slow queue is busy")
    for result in slow:
        result.get(timeout=60)
    time.sleep(2.5)  # let the workers flush their run statistics (every second here)
    command("taskhygiene", "report")


def singleton() -> None:
    step("6. @singleton_task: three beat ticks while one run is in flight, one run")
    values = [r.get(timeout=30) for r in [tasks.refresh_rates.delay(1.5) for _ in range(3)]]
    print(f"  results: {values}")
    check(values.count("rates refreshed") == 1, "one tick ran, the others were skipped")
    check(tasks.refresh_rates.delay(0.1).get(timeout=30) == "rates refreshed", "next tick runs")


def audit() -> None:
    step("7. Hygiene audit of this configuration")
    try:
        command("taskhygiene", "check")
    except SystemExit as exit_:
        print(f"  (taskhygiene check exited with {exit_.code})")


if __name__ == "__main__":
    exactly_once()
    dead_letter = retries_then_dead_letter()
    replay(dead_letter)
    separate_rooms()
    singleton()
    audit()
    print("\nAll steps passed. Open the admin: python example_worker/manage.py runserver")
