"""One run from start to finish: the private services up, the workers started, the load
published, the faults and the drain, the report written and printed; and the clean-up in a
``finally`` (on Ctrl-C and SIGTERM too)."""

from __future__ import annotations

import json
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

from chaos.harness.brokers import PrivateRabbit, PrivateRedis
from chaos.harness.cli import parse_args
from chaos.harness.constants import CONTROL, QUEUE, RABBIT_VHOST, REPO_ROOT, RESULTS_DIR
from chaos.harness.database import setup_django
from chaos.harness.load import plan_messages, start_publisher
from chaos.harness.markdown import render_markdown
from chaos.harness.phases import drain, run_faults
from chaos.harness.postgres import PrivatePgBouncer, PrivatePostgres
from chaos.harness.report import build_report, source_state
from chaos.harness.shell import HarnessError, log
from chaos.harness.timeline import Timeline
from chaos.harness.workers import Pool


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """One run; the exit status: 0 all targets met, 1 a target missed, 2 a harness error,
    130 interrupted. ``description`` is ``chaos/run.py``'s docstring, for --help."""
    args = parse_args(argv, description)
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

        immediate, delayed, planned = plan_messages(args)
        log(
            f"publishing {planned['messages']} messages ({planned['duplicates']} duplicates, "
            f"{len(delayed)} of them delayed)"
        )

        timeline.t0 = time.time()
        publisher = start_publisher(
            task_for, immediate, delayed, timeline, stop_publishing, args.enqueue == "on-commit"
        )

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
