"""Admin dead-letter changelist on 1,000,000 rows: our DeadLetterAdmin against a plain ModelAdmin.

    python benchmarks/admin_changelist.py [--rows 1000000] [--repeat 5] [--keep]

Creates (and drops, unless --keep) a scratch PostgreSQL database ``celery_hygiene_bench``
(or ``$HYGIENE_BENCH_DB_NAME``; server from PGHOST, PGUSER... as in tests/settings.py), fills it
with ``INSERT ... SELECT generate_series`` and times the changelist view (server side: view +
template render, no network) for both admins in the same run. Not part of the test suite.

Result on a 2-core dev machine, 1,000,000 rows, median of 5 (ms, ours / plain ModelAdmin):
first page 75-120 / 1250-1470; status=pending 100-140 / 1690; one task 125-215 / 1180-1380;
last 7 days 75-85 / 1040-1115; task-id search 22 / 3880; sort oldest first 60-115 / 990-2090;
page 200 75-145 / 990-1740. Searching a rare entity or message still scans (about 4 s): see
docs/deadletters-operations.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Always a scratch database of its own (it is dropped and re-created): never HYGIENE_DB_NAME,
# which may be someone's development database.
DB_NAME = os.environ.get("HYGIENE_BENCH_DB_NAME", "celery_hygiene_bench")
os.environ["HYGIENE_DB_NAME"] = DB_NAME
os.environ.pop("HYGIENE_TEST_DB_NAME", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import psycopg  # noqa: E402


def admin_dsn() -> str:
    return (
        f"host={os.environ.get('PGHOST', '127.0.0.1')} port={os.environ.get('PGPORT', '5432')} "
        f"user={os.environ.get('PGUSER', 'postgres')} password={os.environ.get('PGPASSWORD', '')} "
        "dbname=postgres"
    )


def recreate_database() -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def drop_database() -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


# 20 task names, 8 exception types, mostly handled rows, failures spread over ~58 days (5 s apart),
# 2 KB tracebacks: roughly what a busy project accumulates before retention kicks in.
FILL_SQL = """
INSERT INTO celery_hygiene_deadletter (
    task_name, task_id, args, kwargs, queue, exchange, routing_key, headers, entity, operation,
    reason, exception_type, exception_message, traceback, attempts, first_failed_at,
    last_failed_at, worker_hostname, payload_truncated, payload_note, status, replayed_task_id,
    created_at)
SELECT
    'shop.tasks.task_' || (i %% 20),
    md5(i::text),
    jsonb_build_array(i, 'order-' || i),
    jsonb_build_object('amount', i %% 1000, 'token', 'secret-' || i),
    'default', '', 'default', '{}'::jsonb, 'order-' || i, 'shop.tasks.task_' || (i %% 20),
    'exhausted',
    (ARRAY['TimeoutError', 'ConnectionError', 'ValueError', 'KeyError',
           'requests.exceptions.HTTPError', 'psycopg.OperationalError',
           'shop.errors.CardDeclined', 'celery.exceptions.TimeLimitExceeded'])[1 + i %% 8],
    'failure number ' || i || ' while talking to the gateway',
    repeat('Traceback line with some context ', 60),
    5,
    now() - (i * interval '5 seconds') - interval '10 minutes',
    now() - (i * interval '5 seconds'),
    'worker-' || (i %% 7) || '@host',
    false, '',
    CASE WHEN i %% 10 = 0 THEN 'pending' WHEN i %% 10 < 6 THEN 'replayed' ELSE 'discarded' END,
    '',
    now()
FROM generate_series(1, %(rows)s) AS i
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database.")
    options = parser.parse_args()

    recreate_database()
    try:
        run(options)
    finally:
        if not options.keep:
            from django.db import connections

            connections.close_all()
            drop_database()


def run(options: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.contrib import admin
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    from celery_hygiene.models import DeadLetter
    from celery_hygiene.ops.deadletter_admin import DeadLetterAdmin

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(FILL_SQL, {"rows": options.rows})
        cursor.execute("ANALYZE celery_hygiene_deadletter")
    print(f"inserted {options.rows:,} dead letters in {time.perf_counter() - started:.1f} s")

    class BaselineAdmin(admin.ModelAdmin):
        """What one writes first: same columns, filters and search, Django's defaults otherwise."""

        list_display = (
            "task_name",
            "entity",
            "exception_type",
            "attempts",
            "last_failed_at",
            "status",
        )
        list_filter = ("task_name", "exception_type", "status", "last_failed_at")
        search_fields = ("task_id", "entity", "exception_message")

    baseline_site = admin.AdminSite(name="baseline")
    ours = DeadLetterAdmin(DeadLetter, admin.site)
    baseline = BaselineAdmin(DeadLetter, baseline_site)
    user = User.objects.create_superuser("bench", password="bench")
    factory = RequestFactory()

    scenarios = {
        "first page, no filter": {},
        "status=pending": {"status__exact": "pending"},
        "one task": {"task": "shop.tasks.task_7", "task_name": "shop.tasks.task_7"},
        "failed in the last 7 days": {"last_failed_at__gte": "{week_ago}"},
        "search task id": {"q": "c4ca4238a0b923820dcc509a6f75849b"},
        "search message word": {"q": "gateway"},
        "search rare entity": {"q": "order-999999"},
        "oldest first (sort)": {"o": "5"},
    }
    # A deep page: page 200 at full size; small (smoke) runs use a page that exists.
    deep = min(200, max(1, options.rows // (2 * ours.list_per_page)))
    scenarios[f"page {deep}"] = {"p": str(deep)}
    from django.utils import timezone

    week_ago = (timezone.now() - timezone.timedelta(days=7)).isoformat()

    def params_for(model_admin: admin.ModelAdmin, params: dict[str, str]) -> dict[str, str]:
        out = {}
        for key, value in params.items():
            value = value.replace("{week_ago}", week_ago)
            # Each admin names its task filter parameter differently.
            if (
                key == "task"
                and model_admin is baseline
                or key == "task_name"
                and model_admin is ours
            ):
                continue
            out["task_name__exact" if key == "task_name" else key] = value
        if "o" in out and model_admin is baseline:
            out["o"] = "5"  # last_failed_at is the 5th column there too
        return out

    def measure(model_admin: admin.ModelAdmin, params: dict[str, str]) -> tuple[float, int, int]:
        timings, queries, counts = [], 0, 0
        for attempt in range(options.repeat + 1):
            request = factory.get("/admin/celery_hygiene/deadletter/", params)
            request.user = user
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = model_admin.changelist_view(request)
                response.render()
                elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.status_code
            if attempt:  # the first run warms caches and is not counted
                timings.append(elapsed)
            queries = len(captured.captured_queries)
            counts = sum(
                "COUNT(" in q["sql"].upper() and "LIMIT" not in q["sql"].upper()
                for q in captured.captured_queries
            )
        return statistics.median(timings) * 1000, queries, counts

    print(
        f"\nchangelist server time, median of {options.repeat} (ms); "
        "'full counts' = unbounded COUNT(*) queries per view"
    )
    header = (
        f"{'scenario':28} {'ours':>9} {'baseline':>10} {'ratio':>7}"
        "   queries ours/base   full counts ours/base"
    )
    print(header)
    print("-" * len(header))
    for name, params in scenarios.items():
        ours_ms, ours_q, ours_c = measure(ours, params_for(ours, params))
        base_ms, base_q, base_c = measure(baseline, params_for(baseline, params))
        print(
            f"{name:28} {ours_ms:9.1f} {base_ms:10.1f} {base_ms / ours_ms:6.1f}x"
            f"   {ours_q:>7}/{base_q:<11} {ours_c:>7}/{base_c}"
        )


if __name__ == "__main__":
    main()
