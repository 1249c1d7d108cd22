"""What a run measured on: the machine (cores, CPU model, memory), the versions of Python,
PostgreSQL, RabbitMQ, Celery, Django and celery-once, the command line, and the revision of the
library being measured."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path


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
