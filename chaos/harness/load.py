"""The load: the plan of messages (every key once per mode, a share of keys a second time, right
away or at a random moment of the fault phase) and the publisher thread that sends it, retrying
each message through a broker cut under the same task id."""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from typing import Any

from chaos.harness.cli import active_modes
from chaos.harness.constants import QUEUE
from chaos.harness.shell import log
from chaos.harness.timeline import Timeline


def publish(
    task: Any,
    mode: str,
    key: str,
    timeline: Timeline,
    stop: threading.Event,
    on_commit: bool = False,
) -> None:
    """Publish one message, retrying through a broker cut until the broker takes it.

    The task id is chosen here, so a retried publish that did reach the broker only makes a
    same-id copy, and the report can trace every message of a lost key through the worker logs.
    ``on_commit`` (``--enqueue on-commit``): through ``apply_async_on_commit`` (the control task,
    a plain Celery task, keeps ``apply_async``); a publish that fails is the relay's to re-send,
    so only a failed intent write (PostgreSQL away) is retried here.
    """
    task_id = str(uuid.uuid4())
    while not stop.is_set():
        try:
            if on_commit and hasattr(task, "apply_async_on_commit"):
                task_id = _enqueue_on_commit(task, key, task_id)
            else:
                task.apply_async(args=[key], queue=QUEUE, retry=True, task_id=task_id)
            timeline.published += 1
            timeline.sent[(mode, key)].append({"id": task_id, "t": time.time()})
            timeline.order.append(task_id)
            return
        except Exception as exc:  # noqa: BLE001 - any publish failure is retried
            timeline.publish_errors += 1
            if timeline.publish_errors <= 5:
                log(f"publish of {task.name}({key}) failed, retrying: {exc!r}")
            time.sleep(0.5)


def _enqueue_on_commit(task: Any, key: str, task_id: str) -> str:
    """One intent (autocommit: written, then published at once); the task id that will run
    (a duplicate key still unsettled joins the first one's)."""
    from django.db import IntegrityError, connections

    from celery_hygiene.models import EnqueueIntent

    try:
        return str(task.apply_async_on_commit(args=[key], queue=QUEUE, task_id=task_id))
    except IntegrityError:
        # A retry after a write whose COMMIT went through but whose answer was lost.
        if EnqueueIntent.objects.filter(task_id=task_id).exists():
            return task_id
        raise
    except Exception:
        connections.close_all()  # a connection broken by a PostgreSQL restart: a new one
        raise


def plan_messages(
    args: argparse.Namespace,
) -> tuple[list[tuple[str, str]], list[tuple[float, str, str]], dict[str, int]]:
    """(mode, key) to publish right away, in random order; (seconds into the run, mode, key) to
    publish later; and the counts for the report. Draws from ``random``, seeded by the run."""
    # The plan: every key once per mode, a share of keys twice (now or later in the run).
    keys = [f"k{i:06d}" for i in range(args.keys)]
    immediate: list[tuple[str, str]] = []
    delayed: list[tuple[float, str, str]] = []
    dup_horizon = max(5.0, 0.8 * args.chaos_seconds)
    for mode in active_modes(args):
        for key in keys:
            immediate.append((mode, key))
        for key in random.sample(keys, int(round(args.duplicates * len(keys)))):
            if random.random() < args.delayed_share:
                delayed.append((random.uniform(1.0, dup_horizon), mode, key))
            else:
                immediate.append((mode, key))
    random.shuffle(immediate)
    delayed.sort()
    planned = {
        "messages": len(immediate) + len(delayed),
        "duplicates": len(immediate) + len(delayed) - len(active_modes(args)) * len(keys),
        "delayed_duplicates": len(delayed),
    }
    return immediate, delayed, planned


def start_publisher(
    task_for: dict[str, Any],
    immediate: list[tuple[str, str]],
    delayed: list[tuple[float, str, str]],
    timeline: Timeline,
    stop_publishing: threading.Event,
    on_commit: bool = False,
) -> threading.Thread:
    """Start the thread that publishes the plan: the immediate messages, then each delayed one at
    its time (counted from ``timeline.t0``); it stops early once ``stop_publishing`` is set."""

    def publisher_loop() -> None:
        for mode, key in immediate:
            if stop_publishing.is_set():
                return
            publish(task_for[mode], mode, key, timeline, stop_publishing, on_commit)
        for at, mode, key in delayed:
            while not stop_publishing.is_set() and time.time() < timeline.t0 + at:
                time.sleep(0.05)
            publish(task_for[mode], mode, key, timeline, stop_publishing, on_commit)

    publisher = threading.Thread(target=publisher_loop, name="publisher", daemon=True)
    publisher.start()
    return publisher
