"""Phase 0, the floor: per claim + completion, in one process and without a broker, the raw
statements (plain, prepared, on the ``--before-ref`` layout, as one CTE) next to ``claims.acquire``
+ ``claims.complete`` and the decorator called as a worker calls it; ratios to raw per round."""

from __future__ import annotations

import contextlib
import random
import statistics
import time
import uuid

from harness.config import ARGS
from harness.services import sql, truncate

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

    from celery_hygiene.claims import sql as claim_sql
    from celery_hygiene.claims import state as claims
    from celery_hygiene.models import TaskClaim

    truncate(TaskClaim)
    conn = connections["default"]
    conn.ensure_connection()
    pg = conn.connection
    table = conn.ops.quote_name(TaskClaim._meta.db_table)
    insert = claim_sql._sql(claim_sql.INSERT_SQL, "postgresql", table, True, False)
    complete = claim_sql._sql(claim_sql.COMPLETE_SQL, "postgresql", table, False, False)
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
