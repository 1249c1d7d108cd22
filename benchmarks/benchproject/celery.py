"""The benchmark's Celery app, and the worker-side measurement hooks.

Every variant is measured by the same two signal handlers, so the measurement costs all of them
the same:

- ``task_prerun``: note the start (wall clock for the run window, perf_counter for the split).
- ``task_postrun``: one pipelined Redis round trip: count the task as done, note this process's
  last completion time, and push ``total,body`` seconds (total = prerun..postrun; body = what
  the body measured itself; the difference is everything the decorator adds, plus Celery's own
  few microseconds). Deferred duplicates (state IGNORED; they come back later) are counted apart.

For runs named ``trace-*`` the handlers also trace the PostgreSQL wire protocol of the pool
process's connection between prerun and postrun (libpq trace), and push the statements and the
number of round trips (ReadyForQuery messages) of each task.

The run a task belongs to is the prefix of its ``key`` argument (``<run>:<n>``), so one worker
serves every run and its start-up is never part of a measurement.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import django
from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproject.settings")
django.setup()

from django.conf import settings  # noqa: E402

app = Celery("benchproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.ONCE = settings.CELERY_ONCE
app.conf.imports = ["benchapp.tasks"]
# Celery 5.7's Django fixup closes every database connection before and after each task unless
# this (literal) key is set: with BENCH_DB_PER_TASK=1 every task opens a new PostgreSQL
# connection (Celery's default); otherwise pool processes keep theirs, as CONN_MAX_AGE intends.
if os.environ.get("BENCH_DB_PER_TASK") != "1":
    app.conf.CELERY_DB_REUSE_MAX = 10**9

_redis = None
_state: dict[str, object] = {"seen_runs": set(), "t0": 0.0, "trace": None, "run": ""}


def redis_client():  # noqa: ANN201
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(settings.REDIS_URL)
    return _redis


def run_of(task_kwargs: dict | None) -> str:
    """The driver names each run in the key it sends: ``<run>:<n>``."""
    key = str((task_kwargs or {}).get("key", ""))
    return key.split(":", 1)[0] if ":" in key else ""


def _prerun(task_id=None, task=None, kwargs=None, **_kwargs) -> None:  # noqa: ANN001
    run = _state["run"] = run_of(kwargs)
    if not run:
        return
    seen = _state["seen_runs"]
    if run not in seen:  # type: ignore[operator]
        redis_client().hset(f"bench:{run}:first", str(os.getpid()), repr(time.time()))
        seen.add(run)  # type: ignore[attr-defined]
    if run.startswith("trace"):
        _start_trace()
    _state["t0"] = time.perf_counter()


# Connected at import, so it runs before the Django fixup's post-task handler (which may close the
# connection being traced)...
@task_postrun.connect
def _postrun(task_id=None, task=None, state=None, **_kwargs) -> None:  # noqa: ANN001
    run = _state["run"]
    if not run:
        return
    total = time.perf_counter() - _state["t0"]  # type: ignore[operator]
    from benchapp import tasks

    body, tasks.body_seconds = tasks.body_seconds, 0.0
    pipe = redis_client().pipeline(transaction=False)
    if state == "IGNORED":
        pipe.incr(f"bench:{run}:deferred")
    else:
        pipe.incr(f"bench:{run}:done")
        pipe.hset(f"bench:{run}:last", str(os.getpid()), repr(time.time()))
        pipe.rpush(f"bench:{run}:samples", f"{task.name},{total:.7f},{body:.7f}")
    if run.startswith("trace"):
        trace = _stop_trace(ran_body=body > 0, task=task.name)
        pipe.rpush(f"bench:{run}:trace", json.dumps(trace))
    pipe.execute()


@worker_process_init.connect
def _connect_prerun(**_kwargs) -> None:  # noqa: ANN003
    # ...and this one after the fixup's pre-task handler (which may close the connection).
    task_prerun.connect(_prerun, weak=False)
    if os.environ.get("BENCH_NO_COMPLETE") == "1":
        # Upper bound of an amortized completion (run.py --compare nocomplete): no completion
        # statement at all. Benchmark only: the claims stay 'running' until their lease lapses.
        from celery_hygiene.claims import state as claims

        claims.complete = lambda ticket, result_json: True


def _start_trace() -> None:
    from django.db import connection

    # Opening the connection is not part of any task on a warm worker (CONN_MAX_AGE): it is
    # opened here, before tracing starts, and the first traced task of each process is dropped.
    connection.ensure_connection()
    import psycopg

    fd, path = tempfile.mkstemp(prefix="bench-pgtrace-")
    pgconn = connection.connection.pgconn
    pgconn.trace(fd)
    pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
    _state["trace"] = (fd, path, pgconn)


def _stop_trace(*, ran_body: bool, task: str) -> dict:
    fd, path, pgconn = _state["trace"]  # type: ignore[misc]
    pgconn.untrace()  # flushes the trace stream
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    os.close(fd)
    os.unlink(path)
    statements = []
    for i, line in enumerate(lines):
        parts = line.split("\t", 3)
        if parts[0] == "F" and len(parts) == 4 and parts[2] in ("Query", "Parse"):
            text = parts[3].strip().strip('"').strip()
            # A statement that starts with a newline continues on the next trace lines.
            for follow in lines[i + 1 : i + 4]:
                if text or follow.startswith(("F\t", "B\t")):
                    break
                text = follow.strip()
            statements.append(text[:120])
    round_trips = sum(1 for line in lines if line.startswith("B\t") and "\tReadyForQuery\t" in line)
    return {
        "task": task,
        "pid": os.getpid(),
        "ran_body": ran_body,
        "round_trips": round_trips,
        "statements": statements,
    }



if os.environ.get("BENCH_AMORTIZED_TOTALS"):
    # The AMORTIZED_COMPLETION worker: at warm shutdown, write what its main process recorded
    # (completions and statements) for run.py to report completions per batch.
    import json

    from celery.signals import worker_shutdown

    @worker_shutdown.connect(weak=False)
    def _write_amortized_totals(**_kwargs) -> None:  # noqa: ANN003
        from celery_hygiene.worker import amortized

        amortized.stop()  # idempotent: records what is left if the library's hook has not yet
        with open(os.environ["BENCH_AMORTIZED_TOTALS"], "w", encoding="utf-8") as out:
            json.dump(amortized.last_totals(), out)
