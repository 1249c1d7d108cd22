"""Explaining losses: every message sent for a lost, dead-lettered or unfinished key, traced
through the worker logs (received? re-published? still in the broker?), and when its neighbours in
publish order left the queue, with the faults that fell then."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections import defaultdict

from chaos.harness.constants import MODES, UUID_RE
from chaos.harness.timeline import RelativeTime, Timeline
from chaos.harness.workers import Pool

# Messages published just before and after a problem message, read to bracket when it left the
# queue; and the stamp of a worker log line, as trace lines quote it ("<worker>: [stamp: ...").
NEIGHBOURS = 4
STAMP_RE = re.compile(r": \[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")


def trace_problem_keys(
    modes: dict, timeline: Timeline, pool: Pool, rel: RelativeTime
) -> list[dict]:
    """For lost / unfinished / dead-lettered keys: every message sent, and what the workers logged.

    "never received" means no worker logged the message: it was lost between the broker and the
    workers (e.g. a Redis BRPOP answered on a connection the broker cut), not by the library.
    """
    wanted: dict[str, tuple[str, str]] = {}
    for mode in MODES:  # not the control: it loses work by design
        problems = modes[mode]["keys_by_problem"]
        keys = problems.get("lost", []) + problems.get("dead_lettered", [])
        keys += [k.split(":")[0] for k in problems.get("claim_not_terminal", [])]
        for key in keys[:50]:
            for sent in timeline.sent.get((mode, key), []):
                wanted[sent["id"]] = (mode, key)
    if not wanted:
        return []
    # The messages published just before and after each problem message: when they reached a
    # worker brackets when the problem message left the queue.
    position = {task_id: i for i, task_id in enumerate(timeline.order)}
    neighbours: dict[str, list[str]] = {}
    for task_id in wanted:
        i = position.get(task_id)
        if i is not None:
            neighbours[task_id] = timeline.order[max(0, i - NEIGHBOURS) : i + NEIGHBOURS + 1]
    scan = set(wanted) | {n for group in neighbours.values() for n in group}
    lines: dict[str, list[str]] = defaultdict(list)
    received_at: dict[str, list[float]] = defaultdict(list)
    for worker in pool.dead + pool.live:
        with contextlib.suppress(OSError):
            for line in worker.logfile.read_text(errors="replace").splitlines():
                for task_id in set(UUID_RE.findall(line)) & scan:
                    if task_id in wanted:
                        lines[task_id].append(f"{worker.name}: {line[:300]}")
                    if line.endswith("] received") and line.startswith("["):
                        stamp = dt.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
                        received_at[task_id].append(stamp.timestamp())
    traces = []
    for task_id, (mode, key) in wanted.items():
        sent_at = next(s["t"] for s in timeline.sent[(mode, key)] if s["id"] == task_id)
        seen = lines.get(task_id, [])
        traces.append(
            {
                "mode": mode,
                "key": key,
                "task_id": task_id,
                "published_at": rel(sent_at),
                "received": sum(" received" in line for line in seen),
                "verdict": verdict(task_id, seen, timeline, rel),
                "log": seen[-12:],
                **consumed_window(task_id, neighbours.get(task_id, []), received_at, timeline, rel),
            }
        )
    return traces


def verdict(task_id: str, seen: list[str], timeline: Timeline, rel: RelativeTime) -> str:
    """Where the last message with this task id went: a worker, the broker, or nowhere.

    A retry or a deferral re-publishes the message under the same id; when the last thing any
    worker logged for the id is such a re-publish, it is the new message that went missing.
    """
    where = ""
    if timeline.in_broker is not None:
        where = (
            ", still in the broker" if task_id in timeline.in_broker else ", gone from the broker"
        )
    if not seen:
        return "never received by a worker" + where
    stamped = []
    for line in seen:
        match = STAMP_RE.search(line)
        if match:
            stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            stamped.append((stamp, line))
    received = [t for t, line in stamped if line.endswith("] received")]
    republished = [
        t for t, line in stamped if "retry: Retry in" in line or "task_claim_busy" in line
    ]
    if republished and (not received or max(republished) > max(received)):
        return (
            f"received; re-published (retry or deferral) at {rel(max(republished))} s, "
            "and no worker received the new message" + where
        )
    return "received"


def reached_nobody(text: str) -> bool:
    return ("never received" in text or "no worker received" in text) and not text.endswith(
        "still in the broker"
    )


def consumed_window(
    task_id: str,
    group: list[str],
    received_at: dict[str, list[float]],
    timeline: Timeline,
    rel: RelativeTime,
) -> dict:
    """When the neighbours of a message (in publish order) first reached a worker, and which
    faults fell in that window: where a message that no worker ever logged was probably lost."""
    if task_id not in group:
        return {}
    i = group.index(task_id)
    before = [min(received_at[t]) for t in group[:i] if received_at.get(t)]
    after = [min(received_at[t]) for t in group[i + 1 :] if received_at.get(t)]
    if not before or not after:
        return {}
    start, end = min(before) - 1.0, max(after) + 1.0  # log stamps vs kill stamps: 1 s slack
    return {
        "neighbours_received_between": [rel(min(before)), rel(max(after))],
        "kills_in_that_window": [rel(k["t"]) for k in timeline.kills if start <= k["t"] <= end],
        "broker_cut_in_that_window": any(start <= b["t"] <= end for b in timeline.broker_cuts),
    }
