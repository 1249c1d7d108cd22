"""Phase 3, scale and retention: claim latency with 10,000 and 1,000,000 existing rows (loaded
with ``INSERT .. SELECT generate_series``), ``retention.purge_claims`` and ``manage.py
deadletter purge`` of a million old rows, and the dead-letter admin changelist
(benchmarks/admin_changelist.py, on a scratch database of its own)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid

from harness.config import ARGS, BENCH_DIR, REPO, log
from harness.measures import stats
from harness.services import sql, truncate


def _insert_select(model: type, overrides: dict[str, str], start: int, stop: int) -> None:
    """INSERT .. SELECT generate_series for every concrete column of ``model``.

    Columns named in ``overrides`` get that SQL expression (``g`` is the series value); the
    rest get their model default, so the loader keeps working when columns are added.
    """
    from django.db import connection

    columns, values, params = [], [], []
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.column in overrides:
            values.append(overrides[field.column])
        elif field.has_default():
            values.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
        elif field.null:
            values.append("NULL")
        elif field.db_default is not None and field.db_default is not field.__class__.db_default:
            values.append("now()")
        else:
            raise RuntimeError(f"bench loader: no value for {model.__name__}.{field.column}")
    step = 200_000
    for lo in range(start, stop, step):
        hi = min(stop, lo + step)
        sql(
            f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
            f"SELECT {', '.join(values)} FROM generate_series({lo}, {hi - 1}) AS g",
            params,
        )


CLAIM_ROW = {
    "entity": "'order:' || md5(g::text)",
    "operation": "'bench.scale'",
    "task_name": "'bench.scale'",
    "status": "'succeeded'",
    "fingerprint": "md5(g::text) || md5(g::text)",
    "owner_task_id": "md5((g + 1)::text)",
    "owner_worker": "'bench@localhost'",
    "lease_expires_at": "NULL",
    "attempts": "1",
    "result_json": "'{\"ok\": true}'",
    "last_error": "''",
    "created_at": "now() - interval '60 days'",
    "updated_at": "now() - interval '60 days'",
    "completed_at": "now() - interval '60 days' + (g %% 86400) * interval '1 second'",
}


DEADLETTER_ROW = {
    "task_name": "'shop.tasks.task_' || (g %% 20)",
    "task_id": "md5(g::text)",
    "args": "jsonb_build_array(g, 'EUR')",
    "kwargs": "jsonb_build_object('order_id', g, 'amount_cents', g %% 10000)",
    "queue": "'default'",
    "routing_key": "'default'",
    "headers": "jsonb_build_object('root_id', md5(g::text))",
    "entity": "'order:' || g",
    "operation": "'charge'",
    "reason": "(ARRAY['exhausted','gave_up','timeout'])[g %% 3 + 1]",
    "exception_type": "(ARRAY['ValueError','TimeoutError','ConnectionError'])[g %% 3 + 1]",
    "exception_message": "'payment provider said no for order ' || g",
    "traceback": "repeat('  File \"shop/tasks.py\", line 42, in charge\n', 12)",
    "attempts": "5",
    "first_failed_at": "now() - interval '400 days' + g * interval '30 seconds'",
    "last_failed_at": "now() - interval '400 days' + g * interval '30 seconds' "
    "+ interval '5 minutes'",
    "worker_hostname": "'celery@worker-' || (g %% 8)",
    "status": "(ARRAY['pending','replayed','discarded'])[g %% 3 + 1]",
    "created_at": "now() - interval '400 days' + g * interval '30 seconds'",
}


def claim_latency(samples: int) -> dict:
    """Time ``acquire`` + ``complete`` on fresh keys, and ``acquire`` on an existing (duplicate)
    key."""
    from celery_hygiene.claims import state as claims

    def key(entity: str) -> claims.ClaimKey:
        return claims.ClaimKey(entity, "bench.scale", "bench.scale", "0" * 64)

    def one_claim() -> tuple[float, float]:
        ticket_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        result = claims.acquire(
            key(f"fresh:{ticket_id}"),
            owner_task_id=ticket_id,
            owner_worker="bench",
            lease_seconds=300,
            using="default",
        )
        t1 = time.perf_counter()
        assert result.ticket is not None and claims.complete(result.ticket, '"ok"')
        return t1 - t0, time.perf_counter() - t0

    for _ in range(min(200, samples)):  # connection, plan cache, index pages
        one_claim()
    acquire_s, total_s = zip(*(one_claim() for _ in range(samples)), strict=True)
    loaded = sql(
        "SELECT entity FROM celery_hygiene_taskclaim WHERE operation = 'bench.scale' "
        "AND entity LIKE 'order:%%' ORDER BY random() LIMIT %s",
        [samples],
        fetch=True,
    )
    dup_s = []
    for (entity,) in loaded:
        t0 = time.perf_counter()
        result = claims.acquire(
            key(entity),
            owner_task_id="dup",
            owner_worker="bench",
            lease_seconds=300,
            using="default",
        )
        dup_s.append(time.perf_counter() - t0)
        assert result.outcome is claims.Outcome.SUCCEEDED, result
    return {
        "acquire": stats(acquire_s),
        "claim_complete": stats(total_s),
        "duplicate": stats(dup_s),
    }


def scale_phase() -> dict:
    from django.core.management import call_command

    from celery_hygiene.failures.retention import purge_claims
    from celery_hygiene.models import DeadLetter, TaskClaim

    out: dict = {}
    truncate(TaskClaim, DeadLetter)
    small, large = ARGS.scale_small, ARGS.scale_large
    _insert_select(TaskClaim, CLAIM_ROW, 0, small)
    sql("VACUUM ANALYZE celery_hygiene_taskclaim")
    log(f"scale: claim latency with {small:,} rows")
    out["small"] = {"rows": TaskClaim.objects.count(), **claim_latency(ARGS.scale_samples)}
    t0 = time.perf_counter()
    _insert_select(TaskClaim, CLAIM_ROW, small, large)
    sql("VACUUM ANALYZE celery_hygiene_taskclaim")
    out["load_large_s"] = time.perf_counter() - t0
    log(f"scale: claim latency with {large:,} rows (loaded in {out['load_large_s']:.1f}s)")
    out["large"] = {"rows": TaskClaim.objects.count(), **claim_latency(ARGS.scale_samples)}

    log("scale: purge_claims")
    marks = [time.perf_counter()]
    t0 = time.perf_counter()
    purged = purge_claims(
        older_than=dt.timedelta(days=30),
        batch_size=5000,
        on_batch=lambda _total: marks.append(time.perf_counter()),
    )
    out["purge_claims"] = {
        "deleted": purged,
        "seconds": time.perf_counter() - t0,
        "batch_size": 5000,
        "batches": len(marks) - 1,
        "longest_batch_ms": 1000 * max(b - a for a, b in zip(marks, marks[1:], strict=False)),
        "left": TaskClaim.objects.count(),
    }

    if "deadletters" in ARGS.skip:
        return out
    n_dl = ARGS.deadletters
    t0 = time.perf_counter()
    _insert_select(DeadLetter, DEADLETTER_ROW, 0, n_dl)
    sql("VACUUM ANALYZE celery_hygiene_deadletter")
    out["load_deadletters_s"] = time.perf_counter() - t0
    out["deadletters"] = DeadLetter.objects.count()
    log(f"scale: {out['deadletters']:,} dead letters loaded in {out['load_deadletters_s']:.1f}s")

    out["admin"] = admin_changelist_phase()

    log("scale: manage.py deadletter purge")
    t0 = time.perf_counter()
    with open(os.devnull, "w") as sink:
        call_command(
            "deadletter",
            "purge",
            "--older-than",
            "30d",
            "--include-pending",
            "--batch-size",
            "1000",
            stdout=sink,
        )
    out["purge_deadletters"] = {
        "seconds": time.perf_counter() - t0,
        "batch_size": 1000,
        "deleted": n_dl,
        "left": DeadLetter.objects.count(),
    }
    return out


def admin_changelist_phase() -> dict:
    """Run benchmarks/admin_changelist.py (written separately) on its own scratch database."""
    path = BENCH_DIR / "admin_changelist.py"
    if not path.exists():
        return {"status": "missing", "note": "benchmarks/admin_changelist.py not written yet"}
    rows = ARGS.deadletters
    command = [
        sys.executable,
        "-W",
        "ignore",
        str(path),
        "--rows",
        str(rows),
        "--repeat",
        "1" if ARGS.smoke else "5",
    ]
    env = {**os.environ, "HYGIENE_DB_NAME": f"{ARGS.db}_admin"}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # it uses the test project's settings
    log(f"admin: {' '.join(command[3:])} (database {env['HYGIENE_DB_NAME']})")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {
            "status": "error",
            "note": f"admin_changelist.py exited {done.returncode}",
            "output": (done.stdout + done.stderr)[-3000:],
        }
    first_page = None
    for line in done.stdout.splitlines():
        if line.startswith("first page, no filter"):
            first_page = float(line.split()[4])
    return {
        "status": "ok",
        "rows": rows,
        "output": done.stdout.strip(),
        "first_page_ms": first_page,
    }
