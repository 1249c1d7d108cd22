#!/usr/bin/env python
"""How long an ASYNC_COMPLETION stays undurable: the crash window, measured.

For each sample: a claim is taken and completed with ``ASYNC_COMPLETION`` on, the WAL position
of its commit is read (``pg_current_wal_insert_lsn()`` right after, which is at or past it), and
``pg_current_wal_flush_lsn()`` is polled every 0.5 ms until the flush has passed that position.
The time from the completion's return to that moment is the window in which a PostgreSQL server
crash would lose the completion (then the claim is back to ``running`` with its lease). Run on
an otherwise idle connection: on a busy server other commits flush it sooner.

    .venv-bench/bin/python benchmarks/async_window.py --samples 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--db", default=os.environ.get("BENCH_DB_NAME", "celery_hygiene_bench_run"))
    args = p.parse_args()
    os.environ.update(BENCH_DB_NAME=args.db, DJANGO_SETTINGS_MODULE="benchproject.settings")
    sys.path.insert(0, str(BENCH_DIR))
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    from celery_hygiene.claims import state as claims

    settings.CELERY_HYGIENE = {**settings.CELERY_HYGIENE, "ASYNC_COMPLETION": True}
    with connection.cursor() as cursor:
        cursor.execute("SHOW wal_writer_delay")
        delay = cursor.fetchone()[0]
    windows = []
    for _ in range(args.samples):
        k = uuid.uuid4().hex
        result = claims.acquire(
            claims.ClaimKey(f"window:{k}", "bench.window", "bench.window", "0" * 64),
            owner_task_id=k,
            owner_worker="window@bench",
            lease_seconds=300,
            using="default",
        )
        assert result.ticket is not None
        assert claims.complete(result.ticket, '"ok"')
        done = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_insert_lsn()")
            commit_lsn = cursor.fetchone()[0]
            while True:
                cursor.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", [commit_lsn])
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.0005)
        windows.append(1000 * (time.perf_counter() - done))
        time.sleep(0.05)
    windows.sort()
    p99 = windows[min(len(windows) - 1, round(0.99 * (len(windows) - 1)))]
    print(
        f"ASYNC_COMPLETION crash window (wal_writer_delay = {delay}, {len(windows)} samples, idle "
        f"server): median {statistics.median(windows):.1f} ms, p99 {p99:.1f} ms, "
        f"max {windows[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
