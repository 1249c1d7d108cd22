"""Worker main-process pieces without a worker: lease bounds, the amortized pipe."""

from __future__ import annotations

import contextlib
import os
import threading

import pytest
from django.core.exceptions import ImproperlyConfigured

from celery_hygiene import conf, idempotent_task
from celery_hygiene.exceptions import HygieneConfigurationError
from celery_hygiene.worker import amortized, leases


def test_a_lease_shorter_than_three_heartbeat_ticks_is_refused_at_import() -> None:
    with pytest.raises(HygieneConfigurationError, match="shorter than 3 s"):

        @idempotent_task(entity="key", lease_seconds=2)
        def too_short(key: str) -> None: ...

    @idempotent_task(entity="key", lease_seconds=3)
    def long_enough(key: str) -> None: ...


def test_a_default_lease_shorter_than_three_ticks_is_refused(settings) -> None:  # noqa: ANN001
    settings.CELERY_HYGIENE = {"DEFAULT_LEASE_SECONDS": 1}
    with pytest.raises(ImproperlyConfigured, match="DEFAULT_LEASE_SECONDS"):
        conf.get("DEFAULT_LEASE_SECONDS")
    settings.CELERY_HYGIENE = {"DEFAULT_LEASE_SECONDS": 3}
    assert conf.get("DEFAULT_LEASE_SECONDS") == 3


def test_each_renewal_gives_up_well_inside_a_third_of_the_lease() -> None:
    for lease in (3.0, 4.0, 60.0, 3600.0):
        assert leases.renewal_timeout(lease) < lease * leases.RENEW_FRACTION
    assert leases.renewal_timeout(3600.0) == leases.STATEMENT_TIMEOUT_MAX


def test_a_pool_process_never_blocks_on_a_full_pipe() -> None:
    """The main process stopped draining: a send fails at once (the pool process then completes
    inline) instead of blocking the pool process."""
    channel = amortized.Channel()
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(channel.write_fd, b"x" * 4096)
        completion = amortized.Completion("e", "op", "id", 1, '"r"', "default", 30.0)
        outcome: list[bool] = []
        sender = threading.Thread(target=lambda: outcome.append(channel.send(completion)))
        sender.start()
        sender.join(timeout=5)
        assert outcome == [False]
    finally:
        os.close(channel.read_fd)
        os.close(channel.write_fd)


def test_a_completion_record_carries_its_lease() -> None:
    completion = amortized.Completion("e", "op", "id", 2, None, "default", 45.0)
    assert amortized.Completion.decode(completion.encode().rstrip(b"\n")) == completion


def test_the_main_process_steps_start_in_order_and_stop_in_reverse_once(monkeypatch) -> None:  # noqa: ANN001
    """worker/upkeep.py: the one place the main process's steps start and stop."""
    from types import SimpleNamespace

    from celery_hygiene.worker import upkeep

    calls: list[str] = []
    for name, cls in [
        ("runstats", upkeep.RunStatsStep),
        ("watchdog", upkeep.WatchdogStep),
        ("leases", leases.LeaseThread),
        ("writer", upkeep.WriterStep),
    ]:
        monkeypatch.setattr(cls, "start", lambda self, n=name: calls.append(f"start {n}"))
        monkeypatch.setattr(cls, "stop", lambda self, n=name: calls.append(f"stop {n}"))
    from celery_hygiene.worker.broker_upkeep import BrokerUpkeep

    monkeypatch.setattr(BrokerUpkeep, "start", lambda self: calls.append("start broker"))
    monkeypatch.setattr(BrokerUpkeep, "stop", lambda self: calls.append("stop broker"))
    monkeypatch.setattr(amortized, "stop_and_acknowledge", lambda h=None: calls.append("writer"))
    from tests.celery_app import app

    room = upkeep.start(SimpleNamespace(app=app, hostname="w@h"))
    assert list(room.steps) == ["runstats", "watchdog", "leases", "broker", "writer"]
    assert upkeep.hostname() == "w@h"
    assert upkeep.stop("w@h") is True
    assert calls == [
        *(f"start {n}" for n in room.steps),
        *(f"stop {n}" for n in reversed(room.steps)),
    ]
    calls.clear()
    # Stopped already (the consumer step, then worker_shutdown): only the writer is asked again.
    assert upkeep.stop() is False
    assert calls == ["writer"] and upkeep.hostname() is None


def test_the_watchdog_and_the_lease_keeper_read_one_scan() -> None:
    from celery_hygiene.worker import running, watchdog

    assert leases.started_requests is running.started_requests
    assert watchdog.started_requests is running.started_requests
