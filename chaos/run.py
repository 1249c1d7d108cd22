"""Fault-injection suite for celery-hygiene claims (``make chaos``, ``make chaos-smoke``).

Publishes thousands of ``chaos.plain_effect`` / ``chaos.atomic_effect`` tasks (every key once per
mode, a share of them twice), SIGKILLs whole worker process groups every few seconds, restarts a
private PostgreSQL cluster with ``-m immediate``, closes every broker connection once, then
drains and counts per key from the ``SideEffect`` table: ran once / ran twice+ / lost /
dead-lettered, per mode, and whether each plain-mode double is explained by a kill that fell
between the body's effect and the claim's completion.

Everything it cuts is its own: PostgreSQL cluster ``15/faults`` on port 5440, RabbitMQ vhost
``chaos`` (or a Redis on port 6391), PgBouncer on 6441. Never the shared services.

    python chaos/run.py --smoke                       # ~1-2 min, RabbitMQ
    python chaos/run.py --broker redis --keys 1000    # medium run on Redis
    python chaos/run.py --smoke --amortized           # with AMORTIZED_COMPLETION on
    python chaos/run.py --help
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

# `python chaos/run.py` puts chaos/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.harness.brokers import PrivateRabbit, PrivateRedis  # noqa: E402
from chaos.harness.cli import active_modes, parse_args  # noqa: E402
from chaos.harness.constants import (  # noqa: E402
    CONTROL,
    MODES,
    QUEUE,
    RABBIT_VHOST,
    REPO_ROOT,
    RESULTS_DIR,
)
from chaos.harness.database import (  # noqa: E402
    db_call,
    safe_counts,
    setup_django,
    terminal_counts,
)
from chaos.harness.markdown import render_markdown  # noqa: E402
from chaos.harness.postgres import PrivatePgBouncer, PrivatePostgres  # noqa: E402
from chaos.harness.report import build_report, source_state  # noqa: E402
from chaos.harness.shell import HarnessError, log  # noqa: E402
from chaos.harness.timeline import Timeline  # noqa: E402
from chaos.harness.workers import Pool  # noqa: E402

# -- the run ------------------------------------------------------------------------------------


def publish(task, mode: str, key: str, timeline: Timeline, stop: threading.Event) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{args.broker}"
    if args.amortized:
        run_id += "-amortized"
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{run_id}-"))
    logdir = workdir / "logs"
    logdir.mkdir()
    log(f"run {run_id}, seed {seed}, logs in {logdir}")
    source_at_start = source_state()

    # SIGTERM (e.g. from make or CI) takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    pg = PrivatePostgres(args.pg_version, args.pg_cluster, args.pg_port)
    broker: PrivateRabbit | PrivateRedis = (
        PrivateRabbit(RABBIT_VHOST)
        if args.broker == "rabbitmq"
        else PrivateRedis(args.redis_port, workdir)
    )
    bouncer = (
        PrivatePgBouncer(args.pgbouncer_port, args.pg_port, args.db_name)
        if args.pgbouncer
        else None
    )
    pool: Pool | None = None
    timeline = Timeline()
    stop_publishing = threading.Event()
    publisher: threading.Thread | None = None
    report: dict | None = None
    try:
        pg.ensure_running()
        pg.recreate_database(args.db_name)
        broker.reset()
        if bouncer is not None:
            bouncer.start()
        lo, hi = (args.body_ms.split("-") + [args.body_ms])[:2]
        env = {
            "CHAOS_DB_HOST": "127.0.0.1",
            "CHAOS_DB_PORT": str(args.pg_port),
            "CHAOS_DB_NAME": args.db_name,
            "CHAOS_BROKER_URL": broker.url,
            "CHAOS_QUEUE": QUEUE,
            "CHAOS_LEASE_SECONDS": str(args.lease_seconds),
            "CHAOS_BODY_MIN_MS": lo,
            "CHAOS_BODY_MAX_MS": hi,
            "CHAOS_AMORTIZED": "1" if args.amortized else "0",
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
            ),
        }
        setup_django(env)  # the harness itself talks to PostgreSQL directly, never via PgBouncer
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        worker_env = {**os.environ, **env, "DJANGO_SETTINGS_MODULE": "chaos.settings"}
        if bouncer is not None:
            worker_env.update(CHAOS_DB_PORT=str(args.pgbouncer_port), CHAOS_PGBOUNCER="1")

        from chaos.app import tasks
        from chaos.celery_app import app  # noqa: F401 - configures the publisher

        task_for = {
            "plain": tasks.plain_effect,
            "atomic": tasks.atomic_effect,
            CONTROL: tasks.control_effect,
        }

        pool = Pool(args, run_id, logdir, worker_env, timeline)
        first = [pool.start_one() for _ in range(args.workers)]
        pool.wait_ready(first)
        log(
            f"{args.workers} workers ready (prefork -c {args.concurrency}), broker {args.broker}"
            + (", via pgbouncer" if bouncer else "")
            + (", amortized completion" if args.amortized else "")
        )

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
        log(
            f"publishing {planned['messages']} messages ({planned['duplicates']} duplicates, "
            f"{len(delayed)} of them delayed)"
        )

        timeline.t0 = time.time()

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

        faults = run_faults(args, pg, broker, pool, timeline, publisher)
        drained = drain(args, pool, timeline, broker, publisher)
        stop_publishing.set()
        log("stopping workers")
        pool.stop_all()
        timeline.in_broker = broker.ids_present()
        report = build_report(args, run_id, seed, timeline, planned, faults, drained, pool)
        report["versions"]["source_at_start"] = source_at_start
        report["versions"]["source_at_end"] = source_state()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except HarnessError as exc:
        log(f"harness error: {exc}")
        return 2
    finally:
        stop_publishing.set()
        if pool is not None:
            pool.stop_all()
        if bouncer is not None:
            bouncer.close()
        broker.close()
        if args.stop_pg:
            pg.stop()
    out = Path(args.output) if args.output else RESULTS_DIR / f"{run_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(render_markdown(report))
    log(f"report written to {out}; worker logs in {logdir}")
    return 0 if report["targets"]["met"] else 1


def run_faults(
    args, pg: PrivatePostgres, broker, pool: Pool, timeline: Timeline, publisher: threading.Thread
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


def drain(args, pool: Pool, timeline: Timeline, broker, publisher: threading.Thread) -> dict:
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


if __name__ == "__main__":
    sys.exit(main())
