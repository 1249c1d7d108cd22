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

import contextlib
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from harness.config import (  # parses the command line and sets the environment on import
    ARGS,
    BEFORE_DB,
    BENCH_DIR,
    QUEUE,
    REPO,
    RESULTS_DIR,
    log,
)
from harness.runs import (
    latency_run,
    throughput_cases,
    throughput_run,
    trace_run,
)
from harness.services import (
    declare_queue,
    delete_queue,
    export_before,
    migrate_before,
    recreate_database,
    setup_django,
    sql,
    truncate,
)
from harness.variants import (
    AMORTIZED_TARGETS,
    BODIES,
    FLOOR_TARGET,
    MEASURED_AGAINST_TARGETS,
    TARGETS,
    VARIANTS,
)
from harness.worker import Worker, amortized_batches

# -- phase 0: the floor, in one process, no broker ----------------------------------------------

FLOOR_VARIANTS = {
    "raw": "raw psycopg: the claim INSERT + the completion UPDATE (the floor)",
    "raw_prepared": "raw psycopg, the same two statements prepared",
    "raw_before": "raw psycopg, the same two statements on the --before-ref table layout",
    "raw_insert": "raw psycopg: the claim INSERT alone (completion amortized away)",
    "raw_cte": "raw psycopg: claim as one CTE that inserts or returns the existing row, + UPDATE",
    "claims": "`claims.acquire` + `claims.complete`",
    "claims_prepared": "`claims.acquire` + `claims.complete`, PREPARED_STATEMENTS",
    "decorator": "`@idempotent_task`, empty body, called as a worker calls it",
    "decorator_prepared": "`@idempotent_task`, empty body, PREPARED_STATEMENTS",
    "claims_async": "`claims.acquire` + `claims.complete`, ASYNC_COMPLETION",
    "decorator_async": "`@idempotent_task`, empty body, ASYNC_COMPLETION",
    "dup_raw": "duplicate, raw psycopg: INSERT .. DO NOTHING, then SELECT the row",
    "dup_raw_cte": "duplicate, raw psycopg: the one-statement CTE",
    "dup_claims": "duplicate: `claims.acquire` on a succeeded key",
}


def floor_phase() -> dict:
    """Per claim + completion: the raw statements next to the claims layer and the decorator.

    Every variant runs ``--floor-n`` claims on fresh keys per round, variants alternate (the
    starting variant rotates each round), and each round's time is divided by that round's raw
    time: the ratios are medians of those per-round ratios, so load on the machine cancels out.
    """
    import psycopg
    from benchapp import tasks
    from django.conf import settings
    from django.db import connections

    from celery_hygiene import claims
    from celery_hygiene.models import TaskClaim

    truncate(TaskClaim)
    conn = connections["default"]
    conn.ensure_connection()
    pg = conn.connection
    table = conn.ops.quote_name(TaskClaim._meta.db_table)
    insert = claims._sql(claims._INSERT_SQL, "postgresql", table, True, False)
    complete = claims._sql(claims._COMPLETE_SQL, "postgresql", table, False, False)
    select = f"SELECT * FROM {table} WHERE entity = %(entity)s AND operation = %(operation)s"
    # The one-statement duplicate path, measured here and not used by the library (see docs).
    cte = (
        f"WITH ins AS ({insert}) SELECT true, attempts, {', '.join(['NULL'] * 15)} FROM ins "
        f"UNION ALL SELECT false, c.*, statement_timestamp() FROM {table} AS c "
        "WHERE c.entity = %(entity)s AND c.operation = %(operation)s "
        "AND NOT EXISTS (SELECT FROM ins)"
    )
    before = None
    if "before" in ARGS.compare:
        connections["before"].ensure_connection()
        before = connections["before"].connection
        truncate(TaskClaim, using="before")
    hygiene = settings.CELERY_HYGIENE

    def params() -> dict:
        k = uuid.uuid4().hex
        return {
            "entity": f"floor:{k}",
            "operation": "bench.floor",
            "task_name": "bench.floor",
            "fingerprint": "0" * 64,
            "owner": k,
            "worker": "floor@bench",
            "lease_seconds": 300.0,
        }

    def raw(
        connection: object, prepare: bool, with_complete: bool = True, first: str = insert
    ) -> None:
        p = params()
        with psycopg.Cursor(connection) as cur:  # type: ignore[arg-type]
            cur.execute(first, p, prepare=prepare)
            row = cur.fetchone()
            attempts = row[1] if first is cte else row[0]  # type: ignore[index]
            if with_complete:
                cur.execute(
                    complete,
                    {
                        "result": '"ok"',
                        "entity": p["entity"],
                        "operation": p["operation"],
                        "owner": p["owner"],
                        "attempts": attempts,
                    },
                    prepare=prepare,
                )

    def via_claims() -> None:
        p = params()
        result = claims.acquire(
            claims.ClaimKey(p["entity"], p["operation"], p["task_name"], p["fingerprint"]),
            owner_task_id=p["owner"],
            owner_worker="floor@bench",
            lease_seconds=300,
            using="default",
        )
        assert result.ticket is not None and claims.complete(result.ticket, '"ok"')

    def via_decorator() -> None:
        key, task_id = f"floor:{uuid.uuid4().hex}", uuid.uuid4().hex
        task = tasks.idempotent_noop
        task.push_request(
            id=task_id,
            hostname="floor@bench",
            is_eager=False,
            called_directly=False,
            args=(),
            kwargs={"key": key},
            headers={},
            delivery_info={},
            retries=0,
        )
        try:
            assert task(key=key) == key
        finally:
            task.pop_request()

    done_keys: list[dict] = []

    def dup_raw() -> None:
        p = done_keys[random.randrange(len(done_keys))]
        with psycopg.Cursor(pg) as cur:
            cur.execute(insert, {**p, "owner": "dup"})
            assert cur.fetchone() is None
            cur.execute(select, p)
            assert cur.fetchone() is not None

    def dup_raw_cte() -> None:
        p = done_keys[random.randrange(len(done_keys))]
        with psycopg.Cursor(pg) as cur:
            cur.execute(cte, {**p, "owner": "dup"})
            assert cur.fetchone()[0] is False  # type: ignore[index]

    def dup_claims() -> None:
        p = done_keys[random.randrange(len(done_keys))]
        result = claims.acquire(
            claims.ClaimKey(p["entity"], p["operation"], p["task_name"], p["fingerprint"]),
            owner_task_id="dup",
            owner_worker="floor@bench",
            lease_seconds=300,
            using="default",
        )
        assert result.outcome is claims.Outcome.SUCCEEDED

    for _ in range(200):  # keys the duplicate variants look up
        p = params()
        with psycopg.Cursor(pg) as cur:
            cur.execute(insert, p)
            cur.execute(complete, {"result": '"ok"', **p, "attempts": 1})
        done_keys.append(p)

    @contextlib.contextmanager
    def configured(name: str):  # noqa: ANN202
        settings.CELERY_HYGIENE = {
            **hygiene,
            "PREPARED_STATEMENTS": name.endswith("_prepared"),
            "ASYNC_COMPLETION": name.endswith("_async"),
        }
        try:
            yield
        finally:
            settings.CELERY_HYGIENE = hygiene

    def run(name: str) -> None:
        if name == "raw":
            raw(pg, False)
        elif name == "raw_prepared":
            raw(pg, True)
        elif name == "raw_before":
            raw(before, False)
        elif name == "raw_insert":
            raw(pg, False, with_complete=False)
        elif name == "raw_cte":
            raw(pg, False, first=cte)
        elif name == "dup_raw_cte":
            dup_raw_cte()
        elif name.startswith("claims"):
            via_claims()
        elif name.startswith("decorator"):
            via_decorator()
        elif name == "dup_raw":
            dup_raw()
        else:
            dup_claims()

    names = [n for n in FLOOR_VARIANTS if n != "raw_before" or before is not None]
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    n = ARGS.floor_n
    for round_no in range(ARGS.floor_rounds + 1):  # round 0 warms up every variant
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        for name in order:
            with configured(name):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(n if round_no else min(n, 100)):
                    run(name)
                t1, c1 = time.perf_counter(), time.process_time()
            if round_no:
                wall[name].append(1000 * (t1 - t0) / n)
                cpu[name].append(1000 * (c1 - c0) / n)
    out = {}
    for name in names:
        ratios = [w / r for w, r in zip(wall[name], wall["raw"], strict=True)]
        out[name] = {
            "wall_ms": statistics.median(wall[name]),
            "cpu_ms": statistics.median(cpu[name]),
            "ratio": statistics.median(ratios),
            "per_round": ratios,
        }
    hot = sql(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s",
        [TaskClaim._meta.db_table],
        fetch=True,
    )
    out["hot_updates"] = list(hot[0]) if hot else None
    return out


# -- phase 3: scale and retention ----------------------------------------------------------------


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
    "last_failed_at": "now() - interval '400 days' + g * interval '30 seconds' + interval '5 minutes'",
    "worker_hostname": "'celery@worker-' || (g %% 8)",
    "status": "(ARRAY['pending','replayed','discarded'])[g %% 3 + 1]",
    "created_at": "now() - interval '400 days' + g * interval '30 seconds'",
}


def claim_latency(samples: int) -> dict:
    """Time ``acquire`` + ``complete`` on fresh keys, and ``acquire`` on an existing (duplicate) key."""
    from celery_hygiene import claims

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

    from celery_hygiene.models import DeadLetter, TaskClaim
    from celery_hygiene.retention import purge_claims

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


# -- report --------------------------------------------------------------------------------------


def stats(values: object) -> dict:
    xs = sorted(float(v) for v in values)  # type: ignore[attr-defined]
    if not xs:
        return {"n": 0}
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return {
        "n": len(xs),
        "median_ms": 1000 * statistics.median(xs),
        "p99_ms": 1000 * p99,
        "mean_ms": 1000 * statistics.fmean(xs),
    }


def overhead(samples: list[tuple[str, float, float]], name: str) -> dict:
    return stats(total - body for n, total, body in samples if n == name)


def machine() -> dict:
    from benchproject.celery import app
    from django.db import connection

    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    with app.connection_for_write() as conn:
        conn.ensure_connection()
        props = getattr(conn.connection, "server_properties", {}) or {}
        rabbit = props.get("version", "?")
    import celery
    import django

    try:
        import celery_once

        once_version = getattr(celery_once, "__version__", "3.0.1")
    except ImportError:
        once_version = "not installed"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "free": run(["free", "-h"]),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "django": django.get_version(),
        "celery_once": once_version,
        "postgresql": connection.cursor().connection.info.parameter_status("server_version"),
        "rabbitmq": rabbit if isinstance(rabbit, str) else rabbit.decode(),
        "command": " ".join([Path(sys.executable).name, "benchmarks/run.py", *sys.argv[1:]]),
        "library": _library_revision(),
    }


def _library_revision() -> str:
    """The commit of the celery_hygiene source being measured, and whether src/ had edits."""
    import celery_hygiene

    src = Path(celery_hygiene.__file__).resolve().parent
    if os.environ.get("BENCH_LIBRARY_REV"):  # an exported tree (git archive) names its commit
        return f"{os.environ['BENCH_LIBRARY_REV']} ({src})"
    try:
        rev = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{rev}{' + uncommitted changes' if dirty else ''} ({src})"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def report(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Run {m['date']}: `{m['command']}`",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}); Python {m['python']}, PostgreSQL "
        f"{m['postgresql']}, RabbitMQ {m['rabbitmq']}, Celery {m['celery']}, Django "
        f"{m['django']}, celery-once {m['celery_once']}. celery-hygiene at {m['library']}.",
        "",
        "```",
        m["free"],
        "```",
        "",
        f"Worker: `celery worker -P prefork -c {ARGS.concurrency}`, prefetch multiplier 4, "
        f"acks early, no result backend, "
        f"{'a new DB connection per task (Celery default)' if ARGS.db_per_task else 'DB connection kept across tasks (CELERY_DB_REUSE_MAX)'}, "
        f"synchronous_commit={ARGS.synchronous_commit}; bodies below.",
        "",
    ]
    targets: list[tuple[str, str, bool | None]] = []
    fl = results.get("floor")
    if fl:
        lines += [
            f"### Floor: per claim + completion, in one process, no broker ({ARGS.floor_rounds} "
            f"rounds x {ARGS.floor_n} fresh keys per variant, alternated)",
            "",
            "| path | wall per claim (ms, median) | client CPU (ms) | ratio to raw (median of "
            "rounds) | per-round ratios |",
            "|---|---|---|---|---|",
        ]
        for name, label in FLOOR_VARIANTS.items():
            if name not in fl:
                continue
            row = fl[name]
            lines.append(
                f"| {label} | {row['wall_ms']:.3f} | {row['cpu_ms']:.3f} | {row['ratio']:.2f}x | "
                f"{', '.join(f'{x:.2f}' for x in row['per_round'])} |"
            )
        if fl.get("hot_updates"):
            upd, hot = fl["hot_updates"]
            lines += ["", f"HOT updates of the claim table in this phase: {hot:,} of {upd:,}."]
        lines.append("")
        targets.append(
            (
                f"decorator overhead in-process <= {FLOOR_TARGET:.2f} x raw two-statement floor",
                f"{fl['decorator']['ratio']:.2f}x (prepared: "
                f"{fl['decorator_prepared']['ratio']:.2f}x)",
                fl["decorator"]["ratio"] <= FLOOR_TARGET,
            )
        )
    runs = results.get("throughput", [])
    if runs:
        groups: dict[tuple[str, str, str], list[dict]] = {}
        for r in runs:
            groups.setdefault(
                (r.get("body", "micro"), r["variant"], r.get("worker", "now")), []
            ).append(r)
        for body in BODIES:
            base_runs = groups.get((body, "a", "now"), [])
            if not any(k[0] == body for k in groups):
                continue
            base_by_round = {r["round"]: r["tasks_per_s"] for r in base_runs}
            n = ARGS.real_tasks if body == "realistic" else ARGS.tasks
            what = (
                f"five small queries + {ARGS.real_work_ms:g} ms sleep"
                if body == "realistic"
                else f"one INSERT + {ARGS.work_ms:g} ms sleep"
            )
            lines += [
                f"### Throughput, {body} body ({what}): N = {n:,} messages per run, "
                f"{ARGS.rounds} round(s), runs alternated",
                "",
                "| variant | worker | tasks/s (median) | runs | ratio to (a) (median of rounds) | "
                "per-round ratios | worker overhead median / p99 (ms) | publish msg/s | body runs |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for (b, v, kind), rs in groups.items():
                if b != body:
                    continue
                med = statistics.median(r["tasks_per_s"] for r in rs)
                per_round = [
                    r["tasks_per_s"] / base_by_round[r["round"]]
                    for r in rs
                    if r["round"] in base_by_round
                ]
                ratio = statistics.median(per_round) if per_round else None
                samples = [x for r in rs for x in r["samples"]]
                ov = stats(t - bb for _, t, bb in samples)
                pub = statistics.median(r["publish_per_s"] for r in rs)
                eff = rs[0]["expected_effects"]
                who = {
                    "now": "this tree",
                    "before": f"before ({ARGS.before_ref})",
                    "prepared": "this tree, prepared",
                    "async": "this tree, ASYNC_COMPLETION",
                    "amortized": "this tree, AMORTIZED_COMPLETION",
                    "nocomplete": "this tree, completion skipped (upper bound of amortizing it)",
                }[kind]
                lines.append(
                    f"| ({v}) {VARIANTS[v][0]} | {who} | {med:,.0f} | "
                    f"{', '.join(format(r['tasks_per_s'], ',.0f') for r in rs)} | "
                    f"{format(ratio, '.2f') + 'x' if ratio else '-'} | "
                    f"{', '.join(f'{x:.2f}' for x in per_round)} | "
                    f"{ov['median_ms']:.2f} / {ov['p99_ms']:.2f} | {pub:,.0f} | "
                    f"{eff:,} / {rs[0]['messages']:,} |"
                )
                goal = (AMORTIZED_TARGETS if kind == "amortized" else TARGETS).get((body, v))
                if goal is not None and ratio is not None and kind in MEASURED_AGAINST_TARGETS:
                    targets.append(
                        (
                            f"{body}: ({v}) >= {goal:.2f} x (a)"
                            + (f" [{kind}]" if kind != "now" else ""),
                            f"{ratio:.2f}x",
                            ratio >= goal,
                        )
                    )
            lines.append("")
        deferred = sum(r["deferred"] for r in runs)
        lines += [f"Deferred (busy-claim) re-publishes across all runs: {deferred}.", ""]
    lat = results.get("latency")
    if lat:
        lines += [
            f"### Worker-side cost at low load ({ARGS.latency_tasks:,} tasks per variant, "
            f"{ARGS.latency_rate:g} msg/s, interleaved)",
            "",
            "Time from `task_prerun` to `task_postrun` minus the body's own time: what the "
            "decorator adds (claim + complete for hygiene; lock release for celery-once).",
            "",
            "| variant | overhead median (ms) | p99 (ms) | body median (ms) |",
            "|---|---|---|---|",
        ]
        for v in results["latency_variants"]:
            name = VARIANTS[v][1]
            ov = overhead(lat["samples"], name)
            body = stats(b for n, _, b in lat["samples"] if n == name)
            lines.append(
                f"| ({v}) {VARIANTS[v][0]} | {ov['median_ms']:.2f} | {ov['p99_ms']:.2f} | "
                f"{body['median_ms']:.2f} |"
            )
            if v == "b":
                targets.append(
                    (
                        "(b) claim overhead median <= 1 ms (low load)",
                        f"{ov['median_ms']:.2f} ms",
                        ov["median_ms"] <= 1.0,
                    )
                )
                targets.append(
                    (
                        "(b) claim overhead p99 <= 5 ms (low load)",
                        f"{ov['p99_ms']:.2f} ms",
                        ov["p99_ms"] <= 5.0,
                    )
                )
        if runs:
            for r_v in ("b",):
                samples = [
                    s
                    for r in runs
                    if r["variant"] == r_v
                    and r.get("body", "micro") == "micro"
                    and r.get("worker", "now") == "now"
                    for s in r["samples"]
                ]
                if samples:
                    ov = stats(t - b for _, t, b in samples)
                    targets.append(
                        (
                            "(b) claim overhead median <= 1 ms (full load)",
                            f"{ov['median_ms']:.2f} ms",
                            ov["median_ms"] <= 1.0,
                        )
                    )
                    targets.append(
                        (
                            "(b) claim overhead p99 <= 5 ms (full load)",
                            f"{ov['p99_ms']:.2f} ms",
                            ov["p99_ms"] <= 5.0,
                        )
                    )
        lines.append("")
    tr = results.get("trace")
    if tr:
        lines += [
            "### PostgreSQL round trips per task (libpq wire trace, pool process connection)",
            "",
            "| path | tasks | round trips: total (body) beyond body | statements |",
            "|---|---|---|---|",
        ]
        groups = trace_groups(tr["traces"])
        amortized_trace = results.get("trace_amortized")
        if amortized_trace:
            groups += [
                (f"{label}, AMORTIZED_COMPLETION (pool process; the main process adds 1/batch)", rows)
                for label, rows in trace_groups(amortized_trace["traces"])
                if label.startswith("(b)")
            ]
        for label, rows in groups:
            rts = [t["round_trips"] for t in rows]
            body = [sum(1 for s in t["statements"] if "benchapp_effect" in s) for t in rows]
            beyond = [a - b for a, b in zip(rts, body, strict=True)]
            typical = max(set(beyond), key=beyond.count)
            example = next(t for t, b in zip(rows, beyond, strict=True) if b == typical)
            lines.append(
                f"| {label} | {len(rows)} | {statistics.median(rts):g} "
                f"({statistics.median(body):g}) **{typical}** (min {min(beyond)}, max {max(beyond)}) | "
                f"{'; '.join(short_sql(s) for s in example['statements'])} |"
            )
            if label.startswith("(b)") and "AMORTIZED" not in label:
                targets.append(
                    ("(b) happy path <= 2 round trips beyond the body", str(typical), typical <= 2)
                )
        lines.append("")
    ab = results.get("amortized_batches")
    if ab:
        per = ab["recorded"] / ab["batches"] if ab["batches"] else 0.0
        lines += [
            f"AMORTIZED_COMPLETION worker, whole run: {ab['recorded']:,} completions recorded by "
            f"the main process in {ab['batches']:,} statements ({per:.1f} per batch), i.e. "
            f"1 + {1 / per if per else 0:.2f} statements per task with the pool's claim.",
            "",
        ]
    sc = results.get("scale")
    if sc:
        s, lg = sc["small"], sc["large"]
        ratio = lg["claim_complete"]["median_ms"] / s["claim_complete"]["median_ms"]
        lines += [
            "### Scale: claim latency vs existing rows (direct `claims.acquire` + `complete`)",
            "",
            "| existing claims | acquire median / p99 (ms) | acquire+complete median / p99 (ms) | "
            "duplicate lookup median / p99 (ms) |",
            "|---|---|---|---|",
        ]
        for row in (s, lg):
            a, c, d = row["acquire"], row["claim_complete"], row["duplicate"]
            lines.append(
                f"| {row['rows']:,} | {a['median_ms']:.3f} / {a['p99_ms']:.3f} | "
                f"{c['median_ms']:.3f} / {c['p99_ms']:.3f} | {d['median_ms']:.3f} / {d['p99_ms']:.3f} |"
            )
        lines += [
            "",
            f"Ratio large/small (acquire+complete median): {ratio:.2f}x. Loading "
            f"{lg['rows'] - s['rows']:,} claim rows took {sc['load_large_s']:.1f} s.",
            "",
        ]
        targets.append(
            ("claim latency at large within 1.2 x of small", f"{ratio:.2f}x", ratio <= 1.2)
        )
    if sc and "purge_claims" in sc:
        pc = sc["purge_claims"]
        lines += [
            "| retention | rows | time (s) | batch size | rows/s | notes |",
            "|---|---|---|---|---|---|",
            f"| `retention.purge_claims` | {pc['deleted']:,} | {pc['seconds']:.1f} | "
            f"{pc['batch_size']:,} | {pc['deleted'] / pc['seconds']:,.0f} | {pc['batches']} batches, "
            f"longest {pc['longest_batch_ms']:.0f} ms; {pc['left']:,} recent rows kept |",
        ]
        pd = sc.get("purge_deadletters")
        if pd:
            lines.append(
                f"| `manage.py deadletter purge` | {pd['deleted']:,} | {pd['seconds']:.1f} | "
                f"{pd['batch_size']:,} | {pd['deleted'] / pd['seconds']:,.0f} | "
                f"{pd['left']:,} left |"
            )
        lines.append("")
        adm = sc.get("admin") or {"status": "skipped", "note": "--skip deadletters"}
        if adm["status"] == "ok":
            lines += [
                f"### Admin: dead-letter changelist, {adm['rows']:,} rows "
                "(benchmarks/admin_changelist.py)",
                "",
                "```",
                adm["output"],
                "```",
                "",
            ]
            ms = adm["first_page_ms"]
            targets.append(
                (
                    "dead-letter changelist first page <= 300 ms at large",
                    f"{ms:.0f} ms" if ms is not None else "see above",
                    ms <= 300 if ms is not None else None,
                )
            )
        else:
            lines += [f"Admin changelist: not measured ({adm['note']}).", ""]
            if adm.get("output"):
                lines += ["```", adm["output"], "```", ""]
            targets.append(("dead-letter changelist <= 300 ms at large", "not measured", None))
    lines += ["### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, value, ok in targets:
        lines.append(
            f"| {name} | {value} | {'yes' if ok else ('n/a' if ok is None else '**no**')} |"
        )
    return "\n".join(lines) + "\n"


def trace_groups(traces: list[dict]) -> list[tuple[str, list[dict]]]:
    groups: list[tuple[str, list[dict]]] = []
    names = {VARIANTS[v][1]: v for v in "abce"}
    for name, v in names.items():
        rows = [t for t in traces if t.get("task") == name and (t["ran_body"] or v != "b")]
        if rows:
            groups.append((f"({v}) {VARIANTS[v][0]}", rows))
    dups = [t for t in traces if t.get("task") == "bench.idempotent" and not t["ran_body"]]
    if dups:
        groups.append(("(d) duplicate of a succeeded claim", dups))
    return groups


def short_sql(statement: str) -> str:
    s = " ".join(statement.split())
    for table, label in (("celery_hygiene_taskclaim", "taskclaim"), ("benchapp_effect", "effect")):
        s = s.replace(f'\\"{table}\\"', label).replace(f'"{table}"', label).replace(table, label)
    words = s.split()
    if not words:
        return s
    head = words[0].upper()
    if head in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
        return head
    target = next((t for w in words for t in ("taskclaim", "effect") if t in w), "?")
    return f"{head} {target}"


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    started = time.perf_counter()
    log(f"database {ARGS.db}: re-creating; queue {QUEUE}")
    recreate_database(ARGS.db)
    before_src = None
    if "before" in ARGS.compare:
        before_src = export_before(ARGS.before_ref)
        log(f"before: {ARGS.before_ref} exported to {before_src}; database {BEFORE_DB}")
        migrate_before(before_src)
    setup_django()
    from benchapp import tasks

    variants = ARGS.variants
    if "e" in variants and tasks.once is None:
        log("celery-once is not installed in this environment: variant (e) skipped (make bench)")
        variants = variants.replace("e", "")
    declare_queue()
    results: dict = {
        "machine": machine(),
        "args": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(ARGS).items()
        },
    }
    if "floor" not in ARGS.skip:
        log(f"floor: {ARGS.floor_rounds} rounds of {ARGS.floor_n} claims per variant, in process")
        results["floor"] = floor_phase()
        for name, row in results["floor"].items():
            if name in FLOOR_VARIANTS:
                log(f"floor {name}: {row['wall_ms']:.3f} ms, {row['ratio']:.2f}x raw")
    worker = Worker()
    extra = {kind: Worker(kind, before_src if kind == "before" else None) for kind in ARGS.compare}
    try:
        phases = {"trace", "latency", "throughput"} - ARGS.skip
        if phases:
            worker.start()
            log(f"worker {worker.hostname} ready in {worker.startup_s:.1f}s; log {worker.logfile}")
            results["worker_startup_s"] = worker.startup_s
            worker.pause()
        if "throughput" in phases:
            for w in extra.values():
                w.start()
                w.pause()
                log(f"worker {w.hostname} ready; log {w.logfile}")
        # The first run of a variant on a fresh worker pays for imports and connections: the
        # traced run (not timed) goes first and warms every pool process.
        if "trace" in phases:
            log("round trips: traced run")
            results["trace"] = trace_run(worker, variants)
        if "trace" in phases and "amortized" in extra and "b" in variants:
            log("round trips: traced run, AMORTIZED_COMPLETION worker")
            results["trace_amortized"] = trace_run(extra["amortized"], "b")
        if "latency" in phases:
            lat_variants = "".join(v for v in variants if v in "abce")
            log(f"latency: paced run of {lat_variants}")
            results["latency"] = latency_run(worker, lat_variants)
            results["latency_variants"] = lat_variants
        if "throughput" in phases:
            results["throughput"] = []
            for round_no in range(1, ARGS.rounds + 1):
                for body in ARGS.bodies:
                    for v, w in throughput_cases(body, variants, worker, extra):
                        r = throughput_run(w, v, round_no, body)
                        results["throughput"].append(r)
                        log(
                            f"round {round_no} {body} ({v}) {VARIANTS[v][0]} [{w.kind}]: "
                            f"{r['tasks_per_s']:,.0f} tasks/s ({r['seconds']:.2f}s; publish "
                            f"{r['publish_s']:.1f}s; deferred {r['deferred']})"
                        )
        worker.stop()
        for w in extra.values():
            w.stop()
        if "amortized" in extra:
            results["amortized_batches"] = amortized_batches(extra["amortized"])
        if "scale" not in ARGS.skip:
            results["scale"] = scale_phase()
    finally:
        worker.stop()
        for w in extra.values():
            w.stop()
        with contextlib.suppress(Exception):
            delete_queue()
    results["wall_seconds"] = time.perf_counter() - started
    text = report(results) + f"\nWall time of the whole run: {results['wall_seconds']:.0f} s.\n"
    print("\n" + text)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slim = {
        **results,
        "throughput": [
            {k: v for k, v in r.items() if k != "samples"} for r in results.get("throughput", [])
        ],
    }
    slim.pop("latency", None)
    slim.pop("trace", None)
    out_json = RESULTS_DIR / f"{'smoke' if ARGS.smoke else 'full'}-{stamp}.json"
    out_json.write_text(json.dumps(slim, indent=2, default=str))
    if ARGS.markdown:
        ARGS.markdown.write_text(text)
    log(f"results: {out_json.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
