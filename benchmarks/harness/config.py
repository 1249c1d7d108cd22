"""The run's configuration, settled on import: the command line (``ARGS``, with what ``--smoke``
shrinks), the private queue, the scratch database names, and the environment the Django project
(``benchproject``) and every worker read; plus the paths and the driver's log line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from harness.variants import BODIES, COMPARE, VARIANTS

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# The first paragraph of benchmarks/run.py's docstring: what --help says.
DESCRIPTION = (
    "What task hygiene costs: plain Celery vs ``@idempotent_task`` vs celery-once, in one run."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, < 60 s: proves it still runs")
    p.add_argument("-n", "--tasks", type=int, default=10_000, help="messages per throughput run")
    p.add_argument("--rounds", type=int, default=3, help="rounds of a,b,c,d,e")
    p.add_argument("--variants", default="abcde", help="subset of abcde")
    p.add_argument("--concurrency", type=int, default=4, help="prefork pool size")
    p.add_argument("--work-ms", type=float, default=2.0, help="simulated I/O, micro body, ms")
    p.add_argument(
        "--real-work-ms", type=float, default=20.0, help="simulated I/O, realistic body, ms"
    )
    p.add_argument("--bodies", default="micro,realistic", help="comma list: micro,realistic")
    p.add_argument(
        "--real-tasks", type=int, default=None, help="messages per realistic run (default N/4)"
    )
    p.add_argument(
        "--compare",
        default=None,
        help="default before,prepared (none with --smoke); extra workers in the same rounds: "
        "before (the library at --before-ref), "
        "prepared (PREPARED_STATEMENTS on); empty for none",
    )
    p.add_argument("--before-ref", default="3f7c326", help="git ref measured as 'before'")
    p.add_argument("--floor-rounds", type=int, default=9, help="in-process floor phase rounds")
    p.add_argument("--floor-n", type=int, default=400, help="claims per variant per floor round")
    p.add_argument("--latency-tasks", type=int, default=1000, help="per variant, paced run")
    p.add_argument("--latency-rate", type=float, default=150.0, help="messages/s, paced run")
    p.add_argument("--trace-tasks", type=int, default=40, help="traced tasks per variant")
    p.add_argument("--scale-small", type=int, default=10_000)
    p.add_argument("--scale-large", type=int, default=1_000_000)
    p.add_argument("--scale-samples", type=int, default=2000, help="claims timed per size")
    p.add_argument("--deadletters", type=int, default=None, help="default: --scale-large")
    p.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="on",
        help="PostgreSQL synchronous_commit for the benchmark's connections (what-if)",
    )
    p.add_argument(
        "--db-per-task",
        action="store_true",
        help="Celery's default: a new DB connection for every task (no CELERY_DB_REUSE_MAX); "
        "compare throughput only, the overhead split then includes the connect",
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma list of phases: floor,throughput,latency,trace,enqueue,scale,deadletters "
        "(deadletters: the dead-letter purge and admin changelist of the scale phase)",
    )
    # Not "celery_hygiene_bench": benchmarks/admin_changelist.py drops and re-creates that one.
    p.add_argument("--db", default=os.environ.get("BENCH_DB_NAME", "celery_hygiene_bench_run"))
    p.add_argument("--markdown", type=Path, default=None, help="write the report here too")
    args = p.parse_args(argv)
    if args.smoke:
        args.tasks, args.rounds = 50, 1
        args.latency_tasks, args.latency_rate, args.trace_tasks = 20, 100.0, 6
        args.scale_small, args.scale_large, args.scale_samples = 100, 1000, 50
        args.floor_rounds, args.floor_n = 2, 30
    if args.compare is None:
        args.compare = "" if args.smoke else ",".join(COMPARE)
    if args.deadletters is None:
        args.deadletters = args.scale_large
    if args.real_tasks is None:
        args.real_tasks = max(1, args.tasks // 4)
    args.bodies = [b for b in args.bodies.split(",") if b]
    args.compare = [c for c in args.compare.split(",") if c]
    if set(args.bodies) - set(BODIES) or set(args.compare) - set(COMPARE):
        p.error(f"--bodies: choose from {BODIES}; --compare: choose from {COMPARE}")
    bad = set(args.variants) - set(VARIANTS)
    if bad or not args.variants:
        p.error(f"--variants: unknown {sorted(bad)}; choose from {''.join(VARIANTS)}")
    args.skip = {s for s in args.skip.split(",") if s}
    return args


# Settled once, when benchmarks/run.py first imports the harness: --help exits here.
ARGS = parse_args()
QUEUE = f"hygiene-bench-{os.getpid()}"
BEFORE_DB = f"{ARGS.db}_before"
if "before" in ARGS.compare:
    os.environ["BENCH_DB_BEFORE"] = BEFORE_DB
os.environ.update(
    BENCH_DB_NAME=ARGS.db,
    BENCH_QUEUE=QUEUE,
    BENCH_WORK_MS=str(ARGS.work_ms),
    BENCH_REAL_WORK_MS=str(ARGS.real_work_ms),
    DJANGO_SETTINGS_MODULE="benchproject.settings",
    BENCH_SYNCHRONOUS_COMMIT=ARGS.synchronous_commit,
    BENCH_DB_PER_TASK="1" if ARGS.db_per_task else "0",
)
sys.path.insert(0, str(BENCH_DIR))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
