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

import contextlib
import datetime as dt
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

# `python chaos/run.py` puts chaos/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.harness.brokers import PrivateRabbit, PrivateRedis  # noqa: E402
from chaos.harness.cli import active_modes, parse_args  # noqa: E402
from chaos.harness.constants import (  # noqa: E402
    CONTROL,
    MODES,
    OPERATIONS,
    QUEUE,
    RABBIT_VHOST,
    REPO_ROOT,
    RESULTS_DIR,
    TASK_NAMES,
    TERMINAL,
    UUID_RE,
)
from chaos.harness.database import (  # noqa: E402
    db_call,
    safe_counts,
    setup_django,
    terminal_counts,
)
from chaos.harness.postgres import PrivatePgBouncer, PrivatePostgres  # noqa: E402
from chaos.harness.shell import HarnessError, log, run  # noqa: E402
from chaos.harness.timeline import Timeline, epoch  # noqa: E402
from chaos.harness.workers import Pool  # noqa: E402

# A line Celery logs when an execution of a task ends (success, failure, retry, ignore, reject).
END_RE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [A-Z]+/[^\]]+\] "
    r"Task chaos\.\w+\[([0-9a-f-]{36})\] (?!received$)(\w+)"
)
# --amortized: a kill of the worker at most this long after its "succeeded" line for a run
# explains a double (the batch with that run's completion may not have committed yet). The
# writer thread records a batch as soon as the pipe has data: milliseconds, unless PostgreSQL
# refuses it (then it retries with back-off up to DB_RETRY_MAX_WAIT, see AMORTIZED_PG_EXTRA).
AMORTIZED_WINDOW = 2.0
# ... and a PostgreSQL restart overlapping that window extends it to the restart's end plus
# the writer's longest retry wait (DB_RETRY_MAX_WAIT, 5 s by default) plus AMORTIZED_WINDOW.
AMORTIZED_PG_EXTRA = 5.0


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


# -- the report ---------------------------------------------------------------------------------


def build_report(
    args, run_id, seed, timeline: Timeline, planned, faults, drained, pool: Pool
) -> dict:
    from celery_hygiene.models import DeadLetter, TaskClaim
    from chaos.app.models import SideEffect

    def fetch():
        effects = list(
            SideEffect.objects.order_by("created_at", "id").values(
                "key",
                "mode",
                "task_id",
                "worker_pid",
                "worker_pgid",
                "worker",
                "created_at",
                "returns_at",
            )
        )
        claims = list(
            TaskClaim.objects.filter(operation__in=OPERATIONS.values()).values(
                "entity", "operation", "status", "attempts", "completed_at", "last_error"
            )
        )
        letters = list(
            DeadLetter.objects.values(
                "entity",
                "operation",
                "task_name",
                "reason",
                "exception_type",
                "exception_message",
                "attempts",
            )
        )
        return effects, claims, letters

    effects, claims, letters = db_call(fetch)
    t0 = timeline.t0
    rel = lambda t: None if t is None else round(t - t0, 3)  # noqa: E731
    kills = timeline.kills
    op_mode = {op: mode for mode, op in OPERATIONS.items()}
    name_mode = {name: mode for mode, name in TASK_NAMES.items()}

    per_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in effects:
        per_key[(e["mode"], e["key"])].append(e)
    claim_of = {(op_mode[c["operation"]], c["entity"]): c for c in claims}
    dl_of: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for d in letters:
        mode = op_mode.get(d["operation"]) or name_mode.get(d["task_name"], "?")
        dl_of[(mode, d["entity"])].append(d)

    keys = [f"k{i:06d}" for i in range(args.keys)]
    ends = execution_ends(pool)
    modes: dict[str, dict] = {}
    doubles_detail: list[dict] = []
    for mode in active_modes(args):
        stats = defaultdict(int)
        lists: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            runs = per_key.get((mode, key), [])
            claim = claim_of.get((mode, key))
            dead = dl_of.get((mode, key), [])
            n = len(runs)
            if dead:
                stats["dead_lettered"] += 1
                if n:
                    stats["dead_lettered_with_effect"] += 1
            if dead:
                lists["dead_lettered"].append(key)
            if n == 0 and not dead:
                stats["lost"] += 1
                lists["lost"].append(key)
            elif n == 1:
                stats["ran_once"] += 1
            elif n >= 2:
                stats["ran_twice_plus"] += 1
                stats["extra_runs"] += n - 1
            if mode == CONTROL:
                pass  # no claim, by design
            elif claim is None:
                stats["no_claim_row"] += 1
            elif claim["status"] not in TERMINAL:
                stats["claim_not_terminal"] += 1
                lists["claim_not_terminal"].append(f"{key}:{claim['status']}:{claim['attempts']}")
            if n >= 2:
                detail = explain_double(
                    mode, key, runs, claim, kills, timeline, rel, ends, args.amortized
                )
                doubles_detail.append(detail)
                stats["doubles_explained" if detail["explained"] else "doubles_unexplained"] += 1
                if detail.get("lost_commit_reply"):
                    stats["doubles_explained_lost_commit_reply"] += 1
                if detail.get("amortized_window"):
                    stats["doubles_explained_amortized_window"] += 1
                if detail.get("amortized_window_extended_by_pg_restart"):
                    stats["doubles_explained_amortized_window_pg_extended"] += 1
        stats["keys"] = len(keys)
        stats["effect_rows"] = sum(len(per_key.get((mode, k), [])) for k in keys)
        modes[mode] = {
            k: stats.get(k, 0)
            for k in (
                "keys",
                "ran_once",
                "ran_twice_plus",
                "extra_runs",
                "lost",
                "dead_lettered",
                "dead_lettered_with_effect",
                "doubles_explained",
                "doubles_unexplained",
                # A subset of doubles_explained: no kill; the body's write committed and its
                # reply was lost in the PostgreSQL restart (the body raised and was retried).
                "doubles_explained_lost_commit_reply",
                "claim_not_terminal",
                "no_claim_row",
                "effect_rows",
            )
        }
        if args.amortized:
            # A subset of doubles_explained: the kill fell after the run's "succeeded" line.
            for k in (
                "doubles_explained_amortized_window",
                "doubles_explained_amortized_window_pg_extended",
            ):
                modes[mode][k] = stats.get(k, 0)
        reasons = defaultdict(int)
        for key in keys:
            for d in dl_of.get((mode, key), []):
                reasons[f"{d['reason']}:{d['exception_type']}"] += 1
        modes[mode]["dead_letter_reasons"] = dict(reasons)
        # Dead letters of this mode's task that name no key of the run (e.g. no entity at all).
        modes[mode]["dead_letters_total"] = sum(
            1
            for d in letters
            if d["operation"] == OPERATIONS.get(mode) or d["task_name"] == TASK_NAMES.get(mode)
        )
        modes[mode]["keys_by_problem"] = {k: v[:200] for k, v in lists.items()}

    misses = []
    if modes["atomic"]["ran_twice_plus"]:
        misses.append(
            f"atomic mode: {modes['atomic']['ran_twice_plus']} keys ran twice or more (target 0)"
        )
    for mode in MODES:
        if modes[mode]["lost"]:
            misses.append(f"{mode} mode: {modes[mode]['lost']} keys lost (target 0)")
        stray = modes[mode]["dead_letters_total"] - sum(len(dl_of.get((mode, k), [])) for k in keys)
        if stray:
            misses.append(f"{mode} mode: {stray} dead letters that name no key of this run")
        if modes[mode]["dead_lettered"]:
            misses.append(
                f"{mode} mode: {modes[mode]['dead_lettered']} keys dead-lettered (target 0)"
            )
    if modes["plain"]["doubles_unexplained"]:
        misses.append(
            f"plain mode: {modes['plain']['doubles_unexplained']} doubles not explained by a "
            "kill between effect and completion (target 0)"
        )
    if not drained["complete"]:
        misses.append(
            "drain timed out: some keys never reached a terminal claim (counted as lost only "
            "if no effect and no dead letter)"
        )
    if faults["skipped"]:
        misses.append(f"faults not injected (run ended first): {faults['skipped']}")
    log_counts = worker_log_counts(pool, args.amortized)
    if args.amortized and not log_counts.get("amortized_completion_started"):
        misses.append("--amortized: no worker logged amortized_completion_started")

    traces = trace_problem_keys(modes, timeline, pool, rel)
    for mode in MODES:
        # A lost key none of whose messages any worker logged: lost between broker and worker.
        unseen = {t["key"] for t in traces if t["mode"] == mode and reached_nobody(t["verdict"])}
        seen = {t["key"] for t in traces if t["mode"] == mode and t["verdict"] == "received"}
        lost = set(modes[mode]["keys_by_problem"].get("lost", []))
        modes[mode]["lost_never_received"] = len((lost & unseen) - seen)
    return {
        "run_id": run_id,
        "seed": seed,
        "args": vars(args),
        "versions": versions(),
        "planned": planned,
        "published": timeline.published,
        "publish_errors": timeline.publish_errors,
        "faults": {
            "kills": len(timeline.kills),
            "kills_of_ready_workers": sum(1 for k in kills if k["ready"]),
            "worker_starts": len(timeline.worker_starts),
            "pg_restarts": [
                {
                    "at": rel(p["t"]),
                    "back_at": rel(p["end"]),
                    **({"error": p["error"]} if "error" in p else {}),
                }
                for p in timeline.pg_restarts
            ],
            "broker_cuts": [
                {
                    "at": rel(b["t"]),
                    "done_at": rel(b["end"]),
                    **({"error": b["error"]} if "error" in b else {}),
                }
                for b in timeline.broker_cuts
            ],
            "fault_phase_seconds": round(faults["chaos_seconds"], 1),
            "kill_times": [rel(k["t"]) for k in kills],
            **(
                {"kills_in_amortized_window": kills_in_amortized_window(kills, ends, timeline)}
                if args.amortized
                else {}
            ),
        },
        "drain": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in drained.items()},
        "modes": modes,
        "doubles": doubles_detail,
        "targets": {"met": not misses, "misses": misses},
        "traces": traces,
        "worker_log_counts": log_counts,
        "notes": timeline.notes,
    }


def trace_problem_keys(modes: dict, timeline: Timeline, pool: Pool, rel) -> list[dict]:
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


NEIGHBOURS = 4


STAMP_RE = re.compile(r": \[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")


def verdict(task_id: str, seen: list[str], timeline: Timeline, rel) -> str:
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


def consumed_window(task_id, group, received_at, timeline: Timeline, rel) -> dict:
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


LOG_MARKERS = (
    "task_retry_scheduled",
    "task_claim_busy",
    "task_duplicate",
    "task_claim_lost",
    "claim_complete_retry",
    "claim_complete_failed",
    "claim_release_failed",
    "task_dead_lettered",
    "OperationalError",
    "Connection to broker lost",
    "Couldn't ack",
    "WorkerLostError",
)
AMORTIZED_MARKERS = (
    "amortized_completion_started",
    "amortized_completion_stopped",
    "completion_batch_failed",
    "completion_batch_abandoned",
)


def worker_log_counts(pool: Pool, amortized: bool = False) -> dict[str, int]:
    """How often the workers logged each marker: shows that the faults reached them."""
    markers = LOG_MARKERS + (AMORTIZED_MARKERS if amortized else ())
    counts = dict.fromkeys(markers, 0)
    for worker in pool.dead + pool.live:
        with contextlib.suppress(OSError):
            text = worker.logfile.read_text(errors="replace")
            for marker in markers:
                counts[marker] += text.count(marker)
    return counts


def execution_ends(pool: Pool) -> dict[int, dict[str, list[tuple[float, str]]]]:
    """Per worker process group, per task id: when Celery logged the end of an execution, and
    how it ended (the word after the task id: "succeeded", "raised", "retry", ...)."""
    ends: dict[int, dict[str, list[tuple[float, str]]]] = {}
    for worker in pool.dead + pool.live:
        per_id: dict[str, list[tuple[float, str]]] = defaultdict(list)
        with contextlib.suppress(OSError):
            for line in worker.logfile.read_text(errors="replace").splitlines():
                match = END_RE.match(line)
                if match:
                    stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                    # local time, like Celery
                    per_id[match.group(2)].append((stamp.timestamp(), match.group(3)))
        ends[worker.pid] = per_id
    return ends


def kills_in_amortized_window(kills: list[dict], ends, timeline: Timeline) -> dict[str, int]:
    """--amortized: how many kills fell within the window after some "succeeded" line of the
    worker they killed, whether or not a double followed: an upper bound on the kills that can
    have caught a completion waiting for its batch (a busy worker logs a success every few
    hundred ms, so most kills qualify). Within 50 ms is where a waiting batch is plausible."""
    hit = extended = close = 0
    for k in kills:
        stamps = [
            t for per in ends.get(k["pgid"], {}).values() for t, how in per if how == "succeeded"
        ]
        if any(t - 0.002 <= k["t"] <= t + 0.05 for t in stamps):
            close += 1
        if any(t - 0.002 <= k["t"] <= t + AMORTIZED_WINDOW for t in stamps):
            hit += 1
        elif any(t - 0.002 <= k["t"] <= amortized_deadline(t, timeline)[0] for t in stamps):
            extended += 1
    return {
        "within_50ms": close,
        "within_window": hit,
        "within_window_extended_by_pg_restart": extended,
    }


def amortized_deadline(succeeded_at: float, timeline: Timeline) -> tuple[float, bool]:
    """Until when a completion whose run was logged as succeeded at ``succeeded_at`` may still
    have been waiting for its batch: AMORTIZED_WINDOW, or, when a PostgreSQL restart overlaps
    that window, the end of the restart plus the writer's longest retry wait plus the window."""
    deadline = succeeded_at + AMORTIZED_WINDOW
    extended = False
    for p in timeline.pg_restarts:
        if p["t"] <= deadline and p["end"] >= succeeded_at:
            deadline = max(deadline, p["end"] + AMORTIZED_PG_EXTRA + AMORTIZED_WINDOW)
            extended = True
    return deadline, extended


def explain_double(
    mode, key, runs, claim, kills, timeline: Timeline, rel, ends, amortized: bool = False
) -> dict:
    """Which kills could have caused each extra run of this key.

    Run i's effect is followed by run i+1 only if run i never recorded its completion. A kill
    "explains" that if it SIGKILLed the worker that wrote run i's effect (same process group)
    after the effect, before run i+1 started, and while run i was still executing: that
    worker's log shows no end of run i's task (Celery's "succeeded" / "raised" / "retry" line)
    after the effect. The kills of any worker in that window are reported too, to show how
    crowded the window was.

    With ``amortized`` (AMORTIZED_COMPLETION), a run logged as "succeeded" has only handed its
    completion to the worker's main process; the batch holding it commits a little later. A
    kill of that worker after the "succeeded" line, before run i+1 started and at most
    AMORTIZED_WINDOW after the line (longer when a PostgreSQL restart overlaps, see
    amortized_deadline) explains the extra run too: the "amortized window", counted apart.
    """
    completed = epoch(claim["completed_at"]) if claim else None
    gaps = []
    explained = True
    for i, run_ in enumerate(runs):
        start = epoch(run_["created_at"])
        end = epoch(runs[i + 1]["created_at"]) if i + 1 < len(runs) else completed
        if i + 1 == len(runs):
            break
        finished = [
            (t, how)
            for t, how in ends.get(run_["worker_pgid"], {}).get(run_["task_id"], [])
            if t >= start - 0.002  # log stamps are truncated to the millisecond
        ]
        finished_at, ended_how = min(finished) if finished else (None, None)
        own = [
            k
            for k in kills
            if k["pgid"] == run_["worker_pgid"]
            and start <= k["t"] <= end
            and (finished_at is None or k["t"] < finished_at)
        ]
        any_ = [k for k in kills if start <= k["t"] <= end]
        returns = epoch(run_["returns_at"])
        where = None
        if own:
            where = "mid-body" if own[0]["t"] < returns else "after body, before completion"
        window: dict = {}
        if amortized and not own and finished_at is not None and ended_how == "succeeded":
            deadline, extended = amortized_deadline(finished_at, timeline)
            late = [
                k
                for k in kills
                if k["pgid"] == run_["worker_pgid"]
                and start <= k["t"] <= end
                and finished_at - 0.002 <= k["t"] <= deadline
            ]
            if late:
                own = late
                where = "amortized window, after the succeeded line"
                window = {
                    "amortized_window": True,
                    "kill_after_succeeded_s": round(late[0]["t"] - finished_at, 3),
                    "window_extended_by_pg_restart": extended
                    and late[0]["t"] > finished_at + AMORTIZED_WINDOW,
                }
        ended_in_restart = finished_at is not None and any(
            p["t"] <= finished_at <= p["end"] for p in timeline.pg_restarts
        )
        if not own and ended_how == "retry" and ended_in_restart:
            # No kill: the body's own write committed, but PostgreSQL went down before its reply
            # reached the body, which raised and was retried (at-least-once for a body that
            # fails after its effect; atomic mode rolls such a write back). Counted apart.
            window = {**window, "lost_commit_reply": True}
            where = "no kill: its write's commit reply was lost in the PostgreSQL restart"
        pg = [p for p in timeline.pg_restarts if p["t"] <= end and p["end"] >= start]
        cuts = [b for b in timeline.broker_cuts if start <= b["t"] <= end]
        gaps.append(
            {
                "effect_at": rel(start),
                "body_returns_at": rel(returns),
                "next_effect_at": rel(end),
                "worker": run_["worker"],
                "worker_pgid": run_["worker_pgid"],
                "run_ended_at": rel(finished_at),
                "run_ended_how": ended_how,
                # The run ended (e.g. raised and was retried) while PostgreSQL was restarting:
                # its effect may have committed with the reply lost (not a kill; diagnostic).
                "run_ended_in_pg_restart": ended_in_restart,
                "kills_of_that_worker": len(own),
                "kill_at": rel(own[0]["t"]) if own else None,
                "kill_fell": where,
                "kills_of_any_worker": len(any_),
                "pg_restart_in_window": bool(pg),
                "broker_cut_in_window": bool(cuts),
                **window,
            }
        )
        if not own and not window.get("lost_commit_reply"):
            explained = False
    out = {
        "mode": mode,
        "key": key,
        "runs": len(runs),
        "claim_status": claim["status"] if claim else None,
        "claim_attempts": claim["attempts"] if claim else None,
        "explained": explained,
        "gaps": gaps,
        "lost_commit_reply": explained and any(g.get("lost_commit_reply") for g in gaps),
    }
    if amortized:
        out["amortized_window"] = explained and any(g.get("amortized_window") for g in gaps)
        out["amortized_window_extended_by_pg_restart"] = out["amortized_window"] and any(
            g.get("window_extended_by_pg_restart") for g in gaps
        )
    return out


def versions() -> dict:
    import celery
    import django
    import kombu
    import psycopg

    out = {
        "python": sys.version.split()[0],
        "django": django.get_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "psycopg": psycopg.__version__,
    }
    with contextlib.suppress(Exception):
        out["celery_hygiene_commit"] = run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]
        ).stdout.strip()
    return out


def source_state() -> str | None:
    """The library the workers import: HEAD, plus a digest of uncommitted changes under src/.
    Taken at the start and the end of a run; replacement workers import the tree of their
    start, so a run whose two states differ tested more than one version."""
    import hashlib

    with contextlib.suppress(Exception):
        head = run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
        diff = run(["git", "-C", str(REPO_ROOT), "diff", "HEAD", "--", "src"]).stdout
        return head + (f"+dirty:{hashlib.sha1(diff.encode()).hexdigest()[:10]}" if diff else "")
    return None


def lost_cell(m: dict) -> str:
    unseen = m.get("lost_never_received", 0)
    return f"{m['lost']} ({unseen} never reached a worker)" if unseen else str(m["lost"])


def render_markdown(report: dict) -> str:
    a, f, plan, drain_ = report["args"], report["faults"], report["planned"], report["drain"]
    via = " via PgBouncer" if a["pgbouncer"] else ""
    restarts = [p["at"] for p in f["pg_restarts"]]
    cuts = [b["at"] for b in f["broker_cuts"]]
    drained = "complete" if drain_["complete"] else "TIMED OUT"
    amortized = bool(a.get("amortized"))
    mode_note = ", **amortized completion**" if amortized else ""
    lines = [
        "",
        f"## celery-hygiene fault-injection run {report['run_id']}",
        "",
        f"broker **{a['broker']}**{via}{mode_note}, "
        f"{a['keys']} keys x {len(report['modes'])} modes, "
        f"{plan['duplicates']} duplicates ({plan['delayed_duplicates']} delayed), "
        f"{a['workers']} workers x -c {a['concurrency']}, lease {a['lease_seconds']} s, "
        f"seed {report['seed']}",
        f"faults: {f['kills']} SIGKILLs ({f['kills_of_ready_workers']} of ready workers) in "
        f"{f['fault_phase_seconds']} s, PostgreSQL restarts at {restarts} s, broker cuts at "
        f"{cuts} s; drain {drain_['seconds']} s ({drained}, {drain_['rotations']} worker "
        f"rotations); publish retries {report['publish_errors']}",
    ]
    if amortized:
        w = f.get("kills_in_amortized_window", {})
        lines.append(
            f"amortized completion: {w.get('within_window', 0)} kills fell within "
            f"{AMORTIZED_WINDOW:g} s ({w.get('within_50ms', 0)} within 50 ms) after a "
            "'succeeded' line of the worker they killed"
            + (
                f" (+{w['within_window_extended_by_pg_restart']} within the window extended "
                "by the PostgreSQL restart)"
                if w.get("within_window_extended_by_pg_restart")
                else ""
            )
        )
    amortized_col = " of which amortized window |" if amortized else ""
    lines += [
        "",
        "| mode | keys | ran once | ran twice+ | explained by a kill |"
        + amortized_col
        + " unexplained | lost | dead-lettered | claim not terminal |",
        "| --- | ---: | ---: | ---: | ---: |"
        + (" ---: |" if amortized else "")
        + " ---: | ---: | ---: | ---: |",
    ]
    for mode in report["modes"]:
        m = report["modes"][mode]
        unfinished = m["claim_not_terminal"] + m["no_claim_row"]
        window_cell = ""
        if amortized:
            window_cell = f" {m.get('doubles_explained_amortized_window', 0)}"
            if m.get("doubles_explained_amortized_window_pg_extended"):
                window_cell += (
                    f" ({m['doubles_explained_amortized_window_pg_extended']} extended by the "
                    "PostgreSQL restart)"
                )
            window_cell += " |"
        lines.append(
            f"| {mode} | {m['keys']} | {m['ran_once']} | {m['ran_twice_plus']} | "
            f"{m['doubles_explained']} |{window_cell} {m['doubles_unexplained']} | "
            f"{lost_cell(m)} | {m['dead_lettered']} | {unfinished} |"
        )
    for mode in report["modes"]:
        lost_reply = report["modes"][mode].get("doubles_explained_lost_commit_reply", 0)
        if lost_reply:
            lines.append(
                f"\n{mode}: {lost_reply} of the explained doubles had no kill: the body's own "
                "write committed while PostgreSQL went down, its reply never reached the body, "
                "which raised and was retried (the run ended in `retry` during the restart)."
            )
    doubles = report["doubles"]
    shown = [d for d in doubles if d["mode"] != CONTROL]
    if shown:
        lines += [
            "",
            "Doubles. Per extra run, between the earlier effect and the next run: kills of "
            "the worker that wrote the effect while that run was still executing / kills of "
            "any worker:",
            "",
        ]
        for d in shown[:40]:
            parts = []
            for g in d["gaps"]:
                extra = []
                if g["pg_restart_in_window"]:
                    extra.append("pg restart")
                if g["broker_cut_in_window"]:
                    extra.append("broker cut")
                if g.get("window_extended_by_pg_restart"):
                    extra.append("window extended by the pg restart")
                parts.append(
                    f"effect {g['effect_at']} s -> next {g['next_effect_at']} s: "
                    f"{g['kills_of_that_worker']}/{g['kills_of_any_worker']} kills"
                    + (
                        f" ({g['kill_fell']} at {g['kill_at']} s)"
                        if g["kill_fell"] and g["kill_at"] is not None
                        else f" ({g['kill_fell']})"
                        if g["kill_fell"]
                        else ""
                    )
                    + (
                        f" (+{g['kill_after_succeeded_s']} s after the succeeded line)"
                        if g.get("amortized_window")
                        else ""
                    )
                    + (
                        f" (that run ended at {g['run_ended_at']} s: {g.get('run_ended_how')}"
                        + (", during the pg restart" if g.get("run_ended_in_pg_restart") else "")
                        + ")"
                        if g["run_ended_at"]
                        else ""
                    )
                    + (f" [{', '.join(extra)}]" if extra else "")
                )
            lines.append(
                f"- {d['mode']} {d['key']} x{d['runs']} "
                f"({'explained' if d['explained'] else 'UNEXPLAINED'}): " + "; ".join(parts)
            )
        if len(shown) > 40:
            lines.append(f"- ... {len(shown) - 40} more in the JSON report")
    for mode in MODES:
        if report["modes"][mode]["dead_letter_reasons"]:
            lines.append(f"\n{mode} dead letters: {report['modes'][mode]['dead_letter_reasons']}")
    for t in report.get("traces", [])[:20]:
        lines.append(
            f"\ntrace {t['mode']} {t['key']} message {t['task_id']} (published at "
            f"{t['published_at']} s): {t['verdict']}, received {t['received']} time(s)"
        )
        if "neighbours_received_between" in t:
            lines.append(
                f"    neighbours in publish order reached workers between "
                f"{t['neighbours_received_between']} s; kills then: {t['kills_in_that_window']}"
                + ("; broker cut then" if t["broker_cut_in_that_window"] else "")
            )
        lines += [f"    {line}" for line in t["log"][-4:]]
    seen = {k: v for k, v in report.get("worker_log_counts", {}).items() if v}
    lines += ["", f"worker logs: {seen}"]
    v = report.get("versions", {})
    if v.get("source_at_start") != v.get("source_at_end"):
        lines += [
            "",
            f"NOTE: the library changed during the run ({v.get('source_at_start')} -> "
            f"{v.get('source_at_end')}); workers started later ran the newer code",
        ]
    lines += ["", "Targets: " + ("all met" if report["targets"]["met"] else "MISSED")]
    lines += [f"- {m}" for m in report["targets"]["misses"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
