"""Fixtures shared by the whole suite: real broker queues and real worker processes.

Every test that runs a worker uses ``transactional_db``: workers use their own connections and
only see committed rows. Classic Celery fixtures are re-exported from ``celery.contrib.pytest``
because pytest-celery's own ``celery_worker`` needs Docker, which these machines do not have.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from celery import Celery
from django.db import connection

from tests.workers import WorkerProcess


def broker_is_redis() -> bool:
    from django.conf import settings

    return str(settings.CELERY_BROKER_URL).startswith("redis")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the Redis leg, tests of RabbitMQ-only features (dead-letter exchanges, queue-length
    policies that refuse publishes) are skipped."""
    if not broker_is_redis():
        return
    skip = pytest.mark.skip(
        reason="needs a RabbitMQ-only feature (dead-letter exchange, queue-length policy)"
    )
    for item in items:
        if "rabbitmq" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _release_pooled_connections(django_db_setup: None) -> Iterator[None]:
    """On the PgBouncer leg, PgBouncer keeps server connections to the test database after the
    workers stop; end them so pytest-django can drop the database."""
    yield
    import os

    if not os.environ.get("HYGIENE_WORKER_PGPORT"):
        return
    import psycopg

    name = connection.settings_dict["NAME"]
    with psycopg.connect(
        host=connection.settings_dict["HOST"], user="postgres", dbname="postgres", autocommit=True
    ) as pg:
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )


@pytest.fixture(scope="session")
def hygiene_app() -> Celery:
    from tests.celery_app import app

    return app


def declare_queue(app: Celery, name: str) -> None:
    """Declare before publishing: a message routed to a queue that does not exist yet is lost."""
    with app.connection_for_write() as conn:
        app.amqp.queues.select_add(name)
        app.amqp.queues[name].bind(conn.default_channel).declare()


def delete_queue(app: Celery, name: str) -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(name)


@pytest.fixture
def queue_name(hygiene_app: Celery) -> Iterator[str]:
    """A fresh queue per test, so no leftover message from another test can reach its worker."""
    name = f"hygiene-test-{uuid.uuid4().hex[:10]}"
    declare_queue(hygiene_app, name)
    yield name
    delete_queue(hygiene_app, name)


@pytest.fixture
def worker_factory(
    transactional_db: None, hygiene_app: Celery
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker subprocesses on the test database; all are stopped before the DB flush."""
    started: list[WorkerProcess] = []
    db_name = connection.settings_dict["NAME"]

    def start(queues: str, **kwargs: object) -> WorkerProcess:
        for name in queues.split(","):
            declare_queue(hygiene_app, name)
        worker = WorkerProcess(queues, db_name=db_name, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.kill()
    connection.close()


@pytest.fixture
def worker(worker_factory: Callable[..., WorkerProcess], queue_name: str) -> WorkerProcess:
    """A prefork worker (concurrency 4) consuming this test's queue."""
    return worker_factory(queue_name, concurrency=4)


def wait_until(
    predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1
) -> object:
    """Poll until predicate() is truthy; fail with a clear message instead of hanging."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@contextlib.contextmanager
def rabbitmq_policy(queue_name: str, definition: dict[str, object]) -> Iterator[None]:
    """A RabbitMQ policy on one test queue (``rabbitmqctl set_policy``), cleared on exit."""
    policy = f"hygiene-test-{uuid.uuid4().hex[:6]}"
    subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "set_policy",
            "--apply-to",
            "queues",
            policy,
            f"^{queue_name}$",
            json.dumps(definition),
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield
    finally:
        subprocess.run(["rabbitmqctl", "-q", "clear_policy", policy], capture_output=True)
