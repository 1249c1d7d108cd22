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


def publish(task: Any, mode: str, key: str, timeline: Timeline, stop: threading.Event) -> None:
    """Publish one message, retrying through a broker cut until the broker takes it.

    The task id is chosen here, so a retried publish that did reach the broker only makes a
    same-id copy, and the report can trace every message of a lost key through the worker logs.
    """
    task_id = str(uuid.uuid4())
    while not stop.is_set():
        try:
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
) -> threading.Thread:
    """Start the thread that publishes the plan: the immediate messages, then each delayed one at
    its time (counted from ``timeline.t0``); it stops early once ``stop_publishing`` is set."""

    def publisher_loop() -> None:
        for mode, key in immediate:
            if stop_publishing.is_set():
                return
            publish(task_for[mode], mode, key, timeline, stop_publishing)
        for at, mode, key in delayed:
            while not stop_publishing.is_set() and time.time() < timeline.t0 + at:
                time.sleep(0.05)
            publish(task_for[mode], mode, key, timeline, stop_publishing)

    publisher = threading.Thread(target=publisher_loop, name="publisher", daemon=True)
    publisher.start()
    return publisher
