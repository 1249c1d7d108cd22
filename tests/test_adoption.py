"""Adoption as a user does it (issues 11 and 14): a wheel, a fresh venv, a project of its own.

``tests/adoption/project`` is a small Django project shaped like real ones: settings split in
``base``/``local``/``test``, ``config/celery.py`` reading them with ``namespace="CELERY"``, a
project task base class as the app's ``task_cls`` (hygiene for every task), Celery retry options
on a moved task, a periodic task in the beat schedule, a Redis broker, and its own tests in eager
mode. This test builds a wheel of celery-hygiene, installs it with pip into a venv without this
repository on its path, runs the project's own tests there, then runs a real worker and beat and
checks their effects in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from tests.conftest import wait_until
from tests.workers import REPO_ROOT

pytestmark = pytest.mark.worker

PROJECT = REPO_ROOT / "tests" / "adoption" / "project"
BROKER_DB = 12  # a Redis database of its own on the local Redis; queues are per run anyway
INSTALL = ["psycopg[binary]", "redis", "pytest", "pytest-django"]


@dataclass
class Adoption:
    root: Path
    python: Path
    project: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO_"))}
        env.pop("VIRTUAL_ENV", None)
        return {**env, **extra}

    def run(self, *args: str, env: dict[str, str], timeout: float = 180) -> str:
        done = subprocess.run(
            [str(self.python), *args],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr


def _pip(python: Path | str, *args: str, cwd: Path | None = None) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        cwd=cwd,
        timeout=600,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def adoption(tmp_path_factory: pytest.TempPathFactory) -> Adoption:
    root = tmp_path_factory.mktemp("adoption")
    _pip(sys.executable, "wheel", "--no-deps", "-w", str(root / "dist"), str(REPO_ROOT))
    [wheel] = (root / "dist").glob("celery_hygiene-*.whl")
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    _pip(python, "install", str(wheel), *INSTALL, cwd=root)
    project = root / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__"))
    return Adoption(root, python, project)


def test_installed_from_the_wheel_with_declared_dependencies(adoption: Adoption) -> None:
    where = adoption.run(
        "-c",
        "import celery_hygiene, tenacity, celery, django; print(celery_hygiene.__file__)",
        env=adoption.env(),
    )
    assert str(adoption.root / "venv") in where and str(REPO_ROOT) not in where


def test_the_projects_own_eager_tests_pass(adoption: Adoption) -> None:
    env = adoption.env(ADOPT_DB_NAME=f"hyg_adopt_own_{uuid.uuid4().hex[:8]}")
    output = adoption.run("-m", "pytest", "-q", env=env)
    assert "8 passed" in output


@contextlib.contextmanager
def _database(name: str) -> Iterator[None]:
    params = {k: connection.settings_dict[k] for k in ("HOST", "PORT", "USER", "PASSWORD")}
    dsn = dict(host=params["HOST"], port=params["PORT"], user=params["USER"])
    with psycopg.connect(dbname="postgres", autocommit=True, **dsn) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **dsn) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _query(name: str, sql: str) -> list[tuple]:
    settings = connection.settings_dict
    with psycopg.connect(
        dbname=name, host=settings["HOST"], port=settings["PORT"], user=settings["USER"]
    ) as conn:
        return conn.execute(sql).fetchall()


class _Process:
    def __init__(self, adoption: Adoption, args: list[str], env: dict[str, str]) -> None:
        self.log = adoption.root / f"{args[0]}-{uuid.uuid4().hex[:6]}.log"
        celery = adoption.python.parent / "celery"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(celery), "-A", "config", *args],
                cwd=adoption.project,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.process.poll() is None, f"exited early:\n{self.text()}"
            assert time.monotonic() < deadline, f"{needle!r} not seen:\n{self.text()[-4000:]}"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def test_a_real_worker_and_beat_run_the_projects_tasks(adoption: Adoption) -> None:
    name = f"hyg_adopt_live_{uuid.uuid4().hex[:8]}"
    queue = f"adopt-{uuid.uuid4().hex[:8]}"
    host = connection.settings_dict["HOST"] or "127.0.0.1"
    env = adoption.env(
        ADOPT_DB_NAME=name,
        ADOPT_QUEUE=queue,
        ADOPT_BROKER_URL=f"redis://{host}:6379/{BROKER_DB}",
        ADOPT_CLEANUP_EVERY="1",
        ADOPT_MIN_RETRY_DELAY="0.1",
        ADOPT_MAX_RETRY_DELAY="0.3",
        DJANGO_SETTINGS_MODULE="config.settings.local",
    )
    with _database(name):
        adoption.run("manage.py", "migrate", "-v", "0", env=env)
        # The audit's warnings stay out of ordinary commands; its own command is clean.
        assert "no issues" in adoption.run("manage.py", "check", env=env)
        assert "no issues found" in adoption.run("manage.py", "taskhygiene", "check", env=env)
        # The dry run of task_cls: each plain task keeps its own Celery retries.
        dry_run = adoption.run("manage.py", "taskhygiene", "check", "--tasks", env=env)
        assert "shop.tasks.import_feed  [hygienic, Celery's retries]" in dry_run
        assert "no automatic retry (a failure is final)" in dry_run
        assert "on OSError: up to 2 attempts, countdowns 0.1s each" in dry_run
        processes = [
            _Process(
                adoption,
                [
                    "worker",
                    "-Q",
                    queue,
                    "-c",
                    "1",  # one at a time: the duplicate charge finds the first one finished
                    "-n",
                    f"{queue}@localhost",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel=INFO",
                ],
                env,
            ),
        ]
        try:
            processes[0].wait_for(" ready.")
            adoption.run(
                "manage.py",
                "shell",
                "-c",
                "from shop import tasks\n"
                "tasks.record_visit.delay('/pricing')\n"
                "tasks.charge_order.delay(41, 1999)\n"
                "tasks.charge_order.delay(41, 1999)\n"
                "tasks.import_feed.delay('feed-1')\n"
                "tasks.notify_partner.delay('p-io', 'io')\n"
                "tasks.notify_partner.delay('p-value', 'value')\n"
                "tasks.sync_stock.delay('sku-9')\n",
                env=env,
            )
            processes.append(
                _Process(adoption, ["beat", "-s", str(adoption.root / f"beat-{queue}")], env)
            )

            def dead(task: str) -> list[tuple]:
                return _query(
                    name,
                    "SELECT reason, attempts, exception_type FROM celery_hygiene_deadletter "
                    f"WHERE task_name = 'shop.tasks.{task}' ORDER BY exception_type",
                )

            wait_until(
                lambda: dead("import_feed")
                and dead("sync_stock")
                and len(dead("notify_partner")) == 2,
                timeout=60,
            )
            # A plain @app.task, hygienic through task_cls: one run (as in Celery), a dead letter.
            assert dead("import_feed") == [("gave_up", 1, "ValueError")]
            # autoretry_for=(IOError,), max_retries=1: twice on IOError, once on ValueError.
            assert dead("notify_partner") == [
                ("exhausted", 2, "OSError"),
                ("gave_up", 1, "ValueError"),
            ]
            # A decorated task's Celery retry options: max_retries=2 -> 3 attempts.
            assert dead("sync_stock") == [("exhausted", 3, "ConnectionError")]
            attempts = _query(
                name, "SELECT key, count(*) FROM shop_attempt GROUP BY key ORDER BY key"
            )
            assert dict(attempts) == {"feed-1": 1, "p-io": 2, "p-value": 1, "sku-9": 3}
            assert _query(name, "SELECT page FROM shop_visit") == [("/pricing",)]
            wait_until(lambda: _query(name, "SELECT count(*) FROM shop_charge")[0][0] >= 1)
            # Beat publishes the periodic task to the declared queue; the worker runs it.
            wait_until(lambda: _query(name, "SELECT count(*) FROM shop_cleanup")[0][0] >= 1)
            processes[0].wait_for("task_duplicate task=shop.tasks.charge_order")
            assert _query(name, "SELECT order_id, amount_cents FROM shop_charge") == [(41, 1999)]
        finally:
            for process in processes:
                process.kill()
