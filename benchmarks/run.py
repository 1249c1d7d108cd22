#!/usr/bin/env python
"""What task hygiene costs: plain Celery vs ``@idempotent_task`` vs celery-once, in one run.

    make bench                      # full run (N=10,000, 3 rounds, 1,000,000-row scale test)
    make bench-smoke                # tiny N; CI runs it so the benchmark cannot rot
    .venv-bench/bin/python benchmarks/run.py --help

Phases, all against the same real ``celery worker`` command line (prefork, fixed concurrency,
``-Q`` a private queue, RabbitMQ broker, a scratch PostgreSQL database that is dropped and
re-created at the start):

1. Throughput. For each variant: truncate the tables, publish all N messages while no worker
   runs, start a fresh worker, and time from the first task start to the last completion (both
   noted by the same signal handlers for every variant). Variants alternate a,b,c,d,e,a,b,...
   for ``--rounds`` rounds; the median per variant is reported.
2. Worker-side cost. Every task's time between ``task_prerun`` and ``task_postrun`` minus the
   body's own time (from the throughput runs, i.e. under full load, and from a paced run at low
   load), and the PostgreSQL round trips per task from a libpq wire trace.
3. Scale. ``claims.acquire`` + ``claims.complete`` latency with 10,000 and 1,000,000 existing
   claim rows, then ``retention.purge_claims`` of 1,000,000 old claims and
   ``manage.py deadletter purge`` of 1,000,000 old dead letters.
4. Admin. The dead-letter changelist at 1,000,000 rows, through benchmarks/admin_changelist.py
   when that module exists.
"""

from __future__ import annotations

import sys

# Importing the harness parses the command line and sets the environment (harness.config).
from harness.main import main

if __name__ == "__main__":
    sys.exit(main())
