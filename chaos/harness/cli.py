"""The command line of ``chaos/run.py``: sizes, fault times, the services' ports, ``--smoke``
(and what it shrinks), and the modes a run covers."""

from __future__ import annotations

import argparse
import os

from chaos.harness.constants import CONTROL, MODES


def times(value: str) -> list[float]:
    """'20' or '20,70' -> [20.0, 70.0]; 'never', '' or a negative number -> []."""
    if value.strip().lower() in ("", "never", "none"):
        return []
    out = [float(v) for v in value.split(",") if v.strip()]
    return sorted(v for v in out if v >= 0)


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """The options of a run; ``description`` is ``chaos/run.py``'s docstring, shown by --help."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--broker", choices=("rabbitmq", "redis"), default="rabbitmq")
    p.add_argument(
        "--keys",
        type=int,
        default=2000,
        help="keys per mode (each key runs once as plain and once as atomic)",
    )
    p.add_argument(
        "--duplicates", type=float, default=0.3, help="share of keys sent a second time (per mode)"
    )
    p.add_argument(
        "--delayed-share",
        type=float,
        default=0.5,
        help="share of duplicates sent later in the run, not right away",
    )
    p.add_argument(
        "--workers", type=int, default=2, help="worker processes (each prefork -c CONCURRENCY)"
    )
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument(
        "--kill-every",
        type=float,
        default=3.0,
        help="seconds between SIGKILLs of a random worker (0: no kills)",
    )
    p.add_argument(
        "--chaos-seconds",
        type=float,
        default=150.0,
        help="length of the fault phase (kills stop earlier once all work is done and every "
        "scheduled fault has happened)",
    )
    p.add_argument(
        "--pg-restart-at",
        type=times,
        default=[20.0],
        help="seconds into the run, comma-separated for several (e.g. 20,70); 'never' or -1: none",
    )
    p.add_argument(
        "--broker-cut-at",
        type=times,
        default=[40.0],
        help="seconds into the run, comma-separated for several; 'never' or -1: none",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help="seconds to wait for every key to reach a terminal claim after the faults "
        "(default 240 RabbitMQ, 300 Redis)",
    )
    p.add_argument("--lease-seconds", type=float, default=10.0)
    p.add_argument("--body-ms", default="50-300", help="body sleep range, ms")
    p.add_argument(
        "--pgbouncer",
        action="store_true",
        help="workers reach PostgreSQL through a private PgBouncer (transaction mode)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="small and short: 200 keys, faults at 10 s / 20 s, ~1-2 min",
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="also run the body as a plain Celery task without a claim (reported, no target): "
        "shows that the counting sees doubles and that duplicates are not 'explained' by kills",
    )
    p.add_argument(
        "--enqueue",
        choices=("direct", "on-commit"),
        default="direct",
        help="how the publisher sends: apply_async (direct), or apply_async_on_commit (an intent "
        "per message, re-sent by the workers' relay until settled; docs/enqueue.md)",
    )
    p.add_argument(
        "--amortized",
        action="store_true",
        help="workers run with CELERY_HYGIENE['AMORTIZED_COMPLETION'] = True (CHAOS_AMORTIZED=1): "
        "a kill shortly after a run's 'succeeded' line, before its completion batch committed, "
        "also explains a plain-mode double (counted apart as 'amortized window')",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--pg-version", default=None, help="default: the newest under /etc/postgresql")
    p.add_argument("--pg-cluster", default="faults")
    p.add_argument("--pg-port", type=int, default=5440)
    p.add_argument("--pgbouncer-port", type=int, default=6441)
    p.add_argument("--redis-port", type=int, default=6391)
    p.add_argument("--db-name", default="chaos")
    p.add_argument(
        "--stop-pg",
        action="store_true",
        help="stop the private cluster at the end (default: leave it running)",
    )
    p.add_argument(
        "--output", default=None, help="JSON report path (default chaos/results/<run>.json)"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.keys = 200 if args.keys == 2000 else args.keys
        args.chaos_seconds = min(args.chaos_seconds, 45.0)
        args.pg_restart_at = [10.0] if args.pg_restart_at == [20.0] else args.pg_restart_at
        args.broker_cut_at = [20.0] if args.broker_cut_at == [40.0] else args.broker_cut_at
    if args.drain_timeout is None:
        args.drain_timeout = 300.0 if args.broker == "redis" else 240.0
    if args.pg_version is None:
        versions = (
            sorted(
                os.listdir("/etc/postgresql"),
                key=lambda v: [int(x) for x in v.split(".") if x.isdigit()],
            )
            if os.path.isdir("/etc/postgresql")
            else []
        )
        args.pg_version = versions[-1] if versions else "15"
    return args


def active_modes(args: argparse.Namespace) -> tuple[str, ...]:
    return (*MODES, CONTROL) if args.control else MODES
