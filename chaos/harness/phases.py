"""The two timed phases once publishing has started: the fault phase (SIGKILLs of a random
worker with a replacement each, PostgreSQL crash restarts, broker cuts, at the times of the
command line) and the drain (no more faults; wait until every claim is terminal, rotating a
worker when nothing moves)."""

from __future__ import annotations

import argparse
import threading
import time

from chaos.harness.brokers import PrivateRabbit, PrivateRedis
from chaos.harness.constants import MODES
from chaos.harness.database import db_call, safe_counts, terminal_counts
from chaos.harness.postgres import PrivatePostgres
from chaos.harness.shell import log
from chaos.harness.timeline import Timeline
from chaos.harness.workers import Pool


def run_faults(
    args: argparse.Namespace,
    pg: PrivatePostgres,
    broker: PrivateRabbit | PrivateRedis,
    pool: Pool,
    timeline: Timeline,
    publisher: threading.Thread,
) -> dict:
    """The fault phase: periodic SIGKILLs with replacements, one PG restart, one broker cut."""
    t0 = timeline.t0
    pending = []
    pending += [(at, "pg_restart") for at in args.pg_restart_at]
    pending += [(at, "broker_cut") for at in args.broker_cut_at]
    pending.sort()
    threads: list[threading.Thread] = []

    def pg_restart() -> None:
        start = time.time()
        log("fault: PostgreSQL restart -m immediate")
        try:
            pg.crash_restart()
            pg.wait_ready(60)
            timeline.pg_restarts.append({"t": start, "end": time.time()})
        except Exception as exc:  # noqa: BLE001
            timeline.pg_restarts.append({"t": start, "end": time.time(), "error": repr(exc)})
            log(f"PostgreSQL restart failed: {exc!r}")

    def broker_cut() -> None:
        start = time.time()
        log(f"fault: closing every connection to the {args.broker} broker")
        try:
            broker.cut()
            timeline.broker_cuts.append({"t": start, "end": time.time()})
        except Exception as exc:  # noqa: BLE001
            timeline.broker_cuts.append({"t": start, "end": time.time(), "error": repr(exc)})
            log(f"broker cut failed: {exc!r}")

    actions = {"pg_restart": pg_restart, "broker_cut": broker_cut}
    next_kill = t0 + args.kill_every if args.kill_every > 0 else float("inf")
    last_report = t0
    while True:
        now = time.time()
        elapsed = now - t0
        while pending and elapsed >= pending[0][0]:
            _, name = pending.pop(0)
            thread = threading.Thread(target=actions[name], name=name, daemon=True)
            thread.start()
            threads.append(thread)
        if now >= next_kill:
            pool.kill_random()
            pool.replenish()
            next_kill = now + args.kill_every
        else:
            pool.replenish()
        if now - last_report >= 10:
            last_report = now
            counts = safe_counts(args.keys) if not any(t.is_alive() for t in threads) else None
            log(
                f"t={elapsed:5.0f}s kills={len(timeline.kills)} "
                f"published={timeline.published} terminal={counts}"
            )
        if elapsed >= args.chaos_seconds:
            break
        if not pending and not any(t.is_alive() for t in threads) and not publisher.is_alive():
            # All faults happened and everything is published: stop early once all work is done.
            counts = safe_counts(args.keys)
            if counts is not None and all(v >= args.keys for v in counts.values()):
                break
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=120)
    if pending:
        timeline.notes.append(
            f"faults not reached within --chaos-seconds: {[n for _, n in pending]}"
        )
    log(f"fault phase over after {time.time() - t0:.0f}s: {len(timeline.kills)} kills")
    return {"chaos_seconds": time.time() - t0, "skipped": [n for _, n in pending]}


def drain(
    args: argparse.Namespace,
    pool: Pool,
    timeline: Timeline,
    broker: PrivateRabbit | PrivateRedis,
    publisher: threading.Thread,
) -> dict:
    """No more kills: wait until every key has a terminal claim (or the drain timeout)."""
    start = time.time()
    deadline = start + args.drain_timeout
    pool.replenish()
    last_progress, last_total, rotations = start, -1, 0
    counts: dict[str, int] = {}
    while time.time() < deadline:
        counts = db_call(lambda: terminal_counts(args.keys)) or {}
        total = sum(counts.values())
        if total != last_total:
            last_total, last_progress = total, time.time()
        # The control has no claim to wait for: with it, wait for the queue to empty too.
        finished = total >= args.keys * len(MODES) and not publisher.is_alive()
        if finished and (not args.control or broker.queue_depth() == 0):
            break
        if time.time() - last_progress > 30:
            # Stuck: a fresh worker makes kombu's Redis transport restore unacked messages, and
            # costs nothing on RabbitMQ. Counted in the report.
            log(
                f"drain: no progress for 30 s at {counts}, broker {broker.state()}; "
                "rotating a worker"
            )
            pool.rotate()
            rotations += 1
            last_progress = time.time()
        time.sleep(1.0)
    # Let late duplicates (deferred messages with a countdown) find the finished claims.
    time.sleep(3.0)
    depth = broker.queue_depth()
    state = broker.state()
    done = sum(counts.values()) >= args.keys * len(MODES)
    log(
        f"drain {'complete' if done else 'TIMED OUT'} after {time.time() - start:.0f}s: "
        f"terminal={counts}, queue depth={depth}, rotations={rotations}"
    )
    return {
        "seconds": time.time() - start,
        "complete": done,
        "terminal": counts,
        "queue_depth": depth,
        "rotations": rotations,
        "broker_state": state,
    }
