"""Enqueue on commit, three ways side by side (docs/enqueue.md, docs/benchmarks.md).

- ``delay``: ``task.delay()`` inside the transaction (the classic bug, and the floor: a publish);
- ``celery``: Celery's ``DjangoTask.delay_on_commit`` (``transaction.on_commit(partial(delay))``);
- ``ours``: ``task.delay_on_commit()`` (one INSERT of the intent in the transaction, the publish
  after COMMIT).

The same task (``bench.idempotent``, micro body) each time. Producer latency: one transaction per
message, timed from ``atomic()`` to after the on-commit callbacks (the caller's wait), with one
statement of "business" work in it. Worker throughput: the messages of one way published while
the worker is paused, then drained; tasks/s from the first start to the last completion.
Rounds interleave the three ways; ratios are to ``delay`` of the same round.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from harness.config import ARGS, QUEUE
from harness.runs import collect, wait_done
from harness.services import truncate
from harness.worker import Worker

WAYS = ("delay", "celery", "ours")


def _send(way: str, task: Any, key: str) -> None:
    from celery.contrib.django.task import DjangoTask
    from django.db import connection, transaction

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")  # the caller's own work in its transaction
        if way == "delay":
            task.apply_async(kwargs={"key": key}, queue=QUEUE)
        elif way == "celery":
            DjangoTask.apply_async_on_commit(task, kwargs={"key": key}, queue=QUEUE)
        else:
            task.apply_async_on_commit(kwargs={"key": key}, queue=QUEUE)


def enqueue_run(worker: Worker, way: str, round_no: int) -> dict:
    from benchapp import tasks
    from benchapp.models import Effect

    from celery_hygiene.models import EnqueueIntent, TaskClaim

    truncate(TaskClaim, Effect, EnqueueIntent)
    n = ARGS.tasks
    run = f"q{way[0]}{round_no}-{uuid.uuid4().hex[:6]}"
    latencies = []
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        _send(way, tasks.idempotent, f"{run}:{i}")
        latencies.append(time.perf_counter() - t0)
    publish_s = time.perf_counter() - started
    worker.resume()
    try:
        wait_done(worker, run, n, timeout=120 + n / 20)
    finally:
        worker.pause()
    data = collect(run)
    elapsed = data["last"] - data["first"]
    latencies.sort()
    return {
        "way": way,
        "round": round_no,
        "messages": n,
        "producer_p50_ms": 1000 * statistics.median(latencies),
        "producer_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "producer_per_s": n / publish_s,
        "tasks_per_s": n / elapsed,
    }


def enqueue_phase(worker: Worker) -> list[dict]:
    rows = []
    for round_no in range(1, ARGS.rounds + 1):
        for way in WAYS:
            rows.append(enqueue_run(worker, way, round_no))
    return rows


def enqueue_report(rows: list[dict]) -> str:
    """One table: per way, medians over rounds, and ratios to ``delay`` of the same round."""
    if not rows:
        return ""
    base = {r["round"]: r for r in rows if r["way"] == "delay"}
    lines = [
        "\n## Enqueue on commit: producer latency and worker throughput",
        "",
        "| way | producer p50 | producer p95 | p50 vs delay | worker tasks/s | vs delay |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for way in WAYS:
        mine = [r for r in rows if r["way"] == way]
        p50 = statistics.median(r["producer_p50_ms"] for r in mine)
        p95 = statistics.median(r["producer_p95_ms"] for r in mine)
        lat_ratio = statistics.median(
            r["producer_p50_ms"] / base[r["round"]]["producer_p50_ms"] for r in mine
        )
        tps = statistics.median(r["tasks_per_s"] for r in mine)
        tps_ratio = statistics.median(
            r["tasks_per_s"] / base[r["round"]]["tasks_per_s"] for r in mine
        )
        lines.append(
            f"| {way} | {p50:.2f} ms | {p95:.2f} ms | {lat_ratio:.2f}x | {tps:,.0f} | "
            f"{tps_ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"
