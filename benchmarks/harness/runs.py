"""Runs against a worker: publish a run's messages, wait for the workers' done counter, collect
what their signal handlers recorded; the throughput run of one variant, the paced low-load run
and the traced run (PostgreSQL round trips per task); and the order of one round's runs."""

from __future__ import annotations

import json
import time
import uuid

from harness.config import ARGS, QUEUE
from harness.services import redis, truncate
from harness.variants import COMPARED_VARIANTS, VARIANTS, messages_for
from harness.worker import Worker


def publish(messages: list[tuple[str, str]], rate: float | None = None) -> tuple[float, int]:
    """Send (task name, key) messages; returns (seconds, messages celery-once refused)."""
    from benchapp import tasks
    from benchproject.celery import app

    by_name = {
        "bench.plain": tasks.plain,
        "bench.idempotent": tasks.idempotent,
        "bench.idempotent_atomic": tasks.idempotent_atomic,
        "bench.once": tasks.once,
    }
    refused = 0
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i, (name, key) in enumerate(messages):
            if rate:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            result = by_name[name].apply_async(kwargs={"key": key}, queue=QUEUE, producer=producer)
            if getattr(result, "state", None) == "REJECTED":  # celery-once: already queued
                refused += 1
    return time.perf_counter() - started, refused


def wait_done(worker: Worker, run: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    r = redis()
    while True:
        done = int(r.get(f"bench:{run}:done") or 0)
        if done >= expected:
            return
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"run {run}: {done}/{expected} tasks done after {timeout:.0f}s; "
                f"worker errors:\n{worker.errors()[-4000:]}"
            )
        time.sleep(0.05)


def collect(run: str) -> dict:
    r = redis()
    firsts = [float(v) for v in r.hvals(f"bench:{run}:first")]
    lasts = [float(v) for v in r.hvals(f"bench:{run}:last")]
    samples = []
    for raw in r.lrange(f"bench:{run}:samples", 0, -1):
        name, total, body = raw.decode().split(",")
        samples.append((name, float(total), float(body)))
    traces = [json.loads(raw) for raw in r.lrange(f"bench:{run}:trace", 0, -1)]
    deferred = int(r.get(f"bench:{run}:deferred") or 0)
    for suffix in ("first", "last", "samples", "trace", "deferred", "done"):
        r.delete(f"bench:{run}:{suffix}")
    return {
        "first": min(firsts) if firsts else None,
        "last": max(lasts) if lasts else None,
        "samples": samples,
        "traces": traces,
        "deferred": deferred,
    }


def throughput_run(worker: Worker, variant: str, round_no: int, body: str = "micro") -> dict:
    from benchapp.models import Effect

    from celery_hygiene.models import TaskClaim

    # The first letter of the key picks the body (benchapp/tasks.py): r = realistic.
    run = f"{body[0]}{variant}{round_no}{worker.kind[0]}-{uuid.uuid4().hex[:6]}"
    truncate(TaskClaim, Effect, using=worker.alias)
    n = ARGS.real_tasks if body == "realistic" else ARGS.tasks
    messages = messages_for(variant, n, run)
    publish_s, refused = publish(messages)
    worker.resume()
    try:
        wait_done(worker, run, len(messages) - refused, timeout=120 + len(messages) / 20)
    finally:
        worker.pause()
    data = collect(run)
    elapsed = data["last"] - data["first"]
    effects = Effect.objects.using(worker.alias).count()
    expected = len({k for _, k in messages})
    result = {
        "variant": variant,
        "body": body,
        "worker": worker.kind,
        "round": round_no,
        "messages": len(messages),
        "seconds": elapsed,
        "tasks_per_s": len(messages) / elapsed,
        "publish_s": publish_s,
        "publish_per_s": len(messages) / publish_s,
        "refused": refused,
        "effects": effects,
        "expected_effects": expected,
        "deferred": data["deferred"],
        "samples": data["samples"],
        "errors": worker.errors()[-2000:],
    }
    if effects != expected:
        raise RuntimeError(
            f"run {run}: {effects} side effects, expected {expected}: {result['errors']}"
        )
    return result


def latency_run(worker: Worker, variants: str) -> dict:
    """Interleaved variants, paced well below capacity: the cost of hygiene without queueing."""
    from benchapp.models import Effect

    from celery_hygiene.models import TaskClaim

    run = f"lat-{uuid.uuid4().hex[:6]}"
    truncate(TaskClaim, Effect)
    messages = [
        (VARIANTS[v][1], f"{run}:{v}:{i}") for i in range(ARGS.latency_tasks) for v in variants
    ]
    worker.resume()
    try:
        publish(messages, rate=ARGS.latency_rate)
        wait_done(worker, run, len(messages), timeout=120)
    finally:
        worker.pause()
    return collect(run)


def trace_run(worker: Worker, variants: str) -> dict:
    """Wire-level trace of each task's PostgreSQL traffic; duplicates are traced in a second pass.

    Runs first, on the fresh worker, so it also warms every pool process's connection.
    """
    from benchapp.models import Effect

    from celery_hygiene.models import TaskClaim

    run = f"trace-{uuid.uuid4().hex[:6]}"
    truncate(TaskClaim, Effect)
    first = [
        (VARIANTS[v][1], f"{run}:{v}:{i}")
        for i in range(ARGS.trace_tasks)
        for v in variants
        if v != "d"
    ]
    publish(first)
    worker.resume()
    try:
        wait_done(worker, run, len(first), timeout=120)
        expected = len(first)
        if "d" in variants:  # the same keys again: every one of these is a duplicate
            again = [(VARIANTS["b"][1], f"{run}:b:{i}") for i in range(ARGS.trace_tasks)]
            publish(again)
            expected += len(again)
            wait_done(worker, run, expected, timeout=120)
    finally:
        worker.pause()
    return collect(run)


def throughput_cases(
    body: str, variants: str, worker: Worker, extra: dict[str, Worker]
) -> list[tuple[str, Worker]]:
    """One round's runs for one body: every variant on this tree, then the compared workers."""
    own = [v for v in variants if body == "micro" or v != "d"]
    cases = [(v, worker) for v in own]
    for w in extra.values():
        cases += [(v, w) for v in COMPARED_VARIANTS[w.kind][body] if v in own]
    return cases
