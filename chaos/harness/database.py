"""The harness's own Django connection to the private cluster (never through PgBouncer):
Django set up as the chaos project, queries that reconnect through a restart, and the number of
terminal claims per mode."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from chaos.harness.constants import CHAOS_DIR, OPERATIONS, REPO_ROOT, TERMINAL

T = TypeVar("T")


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    # `python chaos/run.py` puts chaos/ first on sys.path: its `app` and `settings` must only
    # be importable as chaos.app and chaos.settings.
    here = CHAOS_DIR
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(REPO_ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "chaos.settings"
    import django

    django.setup()


def db_call(fn: Callable[[], T], *, tries: int = 60, pause: float = 1.0) -> T | None:
    """Run a harness query, reconnecting through the PostgreSQL restart."""
    from django.db import Error, connection

    for attempt in range(tries):
        try:
            return fn()
        except Error:
            connection.close()
            if attempt == tries - 1:
                raise
            time.sleep(pause)
    return None


def terminal_counts(keys_per_mode: int) -> dict[str, int]:
    from django.db.models import Count

    from celery_hygiene.models import TaskClaim

    rows = (
        TaskClaim.objects.filter(operation__in=OPERATIONS.values(), status__in=TERMINAL)
        .values("operation")
        .annotate(n=Count("id"))
    )
    by_op = {r["operation"]: r["n"] for r in rows}
    return {mode: by_op.get(op, 0) for mode, op in OPERATIONS.items()}


def safe_counts(keys_per_mode: int) -> dict[str, int] | None:
    """Terminal claims per mode, or None while the database is unreachable (reconnects later)."""
    from django.db import connection

    for _ in range(2):  # the first query after a restart fails on the old connection
        try:
            return terminal_counts(keys_per_mode)
        except Exception:  # noqa: BLE001 - e.g. during the PostgreSQL restart
            connection.close()
    return None
