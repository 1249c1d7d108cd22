"""Per-queue worker pools: declaration, routing, isolation between pools, per-queue time limits.

Worker tests start real workers with the declaration in HYGIENE_TEST_QUEUES (applied by
tests/testapp/tasks_routing.py, as a project's celery.py would apply its settings).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from kombu import Queue

from celery_hygiene.exceptions import HygieneConfigurationError
from celery_hygiene.models import DeadLetter
from celery_hygiene.task.routing import (
    QueueSpec,
    apply_queue_time_limits,
    configure_queues,
    parse_queues,
)
from tests.conftest import delete_queue, wait_until
from tests.workers import WorkerProcess


def _app(declaration: dict[str, Any]) -> Celery:
    app = Celery(f"routing-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.config_from_object(settings, namespace="CELERY")
    configure_queues(app, declaration)
    return app


def _queue_names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"hygiene-fast-{suffix}", f"hygiene-slow-{suffix}"


# -- declaration -> Celery config -------------------------------------------------------------


def test_declaration_becomes_queues_routes_and_default_queue() -> None:
    app = _app(
        {
            "fast": {"tasks": ["shop.emails.*", "shop.notify"], "default": True},
            "slow": {"tasks": ["reports.*"], "slow": True, "prefetch_multiplier": 1},
            "bounded": {"tasks": ["payments.*"], "soft_time_limit": 30, "time_limit": 60},
        }
    )
    assert [q.name for q in app.conf.task_queues] == ["fast", "slow", "bounded"]
    assert all(isinstance(q, Queue) and q.routing_key == q.name for q in app.conf.task_queues)
    assert app.conf.task_default_queue == "fast"
    route = app.amqp.router.route
    assert route({}, "reports.monthly")["queue"].name == "slow"
    assert route({}, "shop.notify")["queue"].name == "fast"
    assert route({}, "payments.capture")["queue"].name == "bounded"
    assert route({}, "unrelated.task")["queue"].name == "fast"  # the default queue
    # A queue= option (on the task or on apply_async) wins over the declared patterns.
    assert route({"queue": "slow"}, "shop.notify")["queue"].name == "slow"


def test_existing_routes_and_queues_are_kept_and_win() -> None:
    app = Celery("routing-existing", set_as_current=False)
    app.conf.task_queues = [Queue("legacy")]
    app.conf.task_routes = {"reports.special": {"queue": "legacy"}}
    configure_queues(app, {"slow": {"tasks": ["reports.*"]}})
    assert [q.name for q in app.conf.task_queues] == ["legacy", "slow"]
    assert app.amqp.router.route({}, "reports.special")["queue"].name == "legacy"
    assert app.amqp.router.route({}, "reports.other")["queue"].name == "slow"


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        (["fast"], "must be a dict of queue name"),
        ({"fast": {"tasks": "shop.*"}}, "CELERY_HYGIENE_QUEUES['fast']['tasks'] must be a list"),
        ({"fast": {"task": ["shop.*"]}}, "unknown option(s) 'task'"),
        ({"b": {"time_limit": "60s"}}, "['b']['time_limit'] must be a positive number"),
        ({"b": {"soft_time_limit": 0}}, "must be a positive number"),
        ({"b": {"soft_time_limit": 60, "time_limit": 30}}, "must be below time_limit"),
        ({"a": {"default": True}, "b": {"default": True}}, "only one queue can be the default"),
        ({"a": {"tasks": ["x.*"]}, "b": {"tasks": ["x.*"]}}, "listed under both 'a' and 'b'"),
        ({"s": {"prefetch_multiplier": 0}}, "must be a whole number >= 1"),
    ],
)
def test_invalid_declarations_say_what_and_where(declaration: Any, message: str) -> None:
    with pytest.raises(HygieneConfigurationError) as excinfo:
        parse_queues(declaration)
    assert message in str(excinfo.value)


class _Task:
    time_limit: float | None = None
    soft_time_limit: float | None = None


class _Request:
    def __init__(self, routing_key: str, time_limits: Any = (None, None)) -> None:
        self.delivery_info = {"exchange": routing_key, "routing_key": routing_key}
        self.time_limits = time_limits
        self.task = _Task()
        self.request_dict: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        ((None, None), (60.0, 30.0)),  # the queue's limits
        ((10, 5), (10, 5)),  # the message's own, tighter limits stay
        ((600, 300), (60.0, 30.0)),  # looser ones are cut down to the queue's
    ],
)
def test_received_requests_get_the_tighter_limits(own: Any, expected: Any) -> None:
    app = _app({"bounded": {"soft_time_limit": 30, "time_limit": 60}, "fast": {}})
    request = _Request("bounded", own)
    apply_queue_time_limits(app, request)
    assert request.time_limits == expected
    assert request.request_dict["timelimit"] == expected  # what task.request.timelimit shows
    untouched = _Request("fast")
    apply_queue_time_limits(app, untouched)
    assert untouched.time_limits == (None, None)


def test_queue_spec_is_bounded_only_with_a_limit() -> None:
    assert not QueueSpec("fast").bounded
    assert QueueSpec("b", soft_time_limit=1).bounded


# -- real workers -------------------------------------------------------------------------------


@pytest.fixture
def pools(
    worker_factory: Callable[..., WorkerProcess], hygiene_app: Celery
) -> Any:  # yields (producer app, fast queue, slow queue)
    fast, slow = _queue_names()
    declaration = {
        fast: {"tasks": ["routing.quick"]},
        slow: {
            "tasks": ["routing.block", "routing.overrun", "routing.stubborn"],
            "slow": True,
            "soft_time_limit": 1,
            "time_limit": 2.5,
        },
    }
    env = {"HYGIENE_TEST_QUEUES": json.dumps(declaration)}
    worker_factory(fast, concurrency=2, env=env)
    worker_factory(slow, concurrency=1, env=env)
    yield _app(declaration), fast, slow
    delete_queue(hygiene_app, fast)
    delete_queue(hygiene_app, slow)


@pytest.mark.worker
def test_a_blocked_slow_queue_does_not_delay_fast_tasks(pools: Any) -> None:
    app, _fast, _slow = pools
    # The slow pool (one process) is busy for a while: this one runs, the next two wait.
    blocked = [
        app.send_task("routing.block", args=[0.8]) for _ in range(3)
    ]  # under the 1 s soft limit
    time.sleep(0.3)
    sent = time.time()
    finished_at = app.send_task("routing.quick").get(timeout=10)
    assert finished_at - sent < 1.0, "the fast task waited behind the slow queue"
    assert not blocked[-1].ready()
    assert [r.get(timeout=20) for r in blocked] == ["blocked"] * 3


@pytest.mark.worker
def test_an_overrun_on_a_bounded_queue_is_a_timeout_dead_letter(pools: Any) -> None:
    app, _fast, slow = pools
    soft = app.send_task("routing.overrun", args=[5])
    hard = app.send_task("routing.stubborn", args=[5])
    for result, exception in ((soft, "SoftTimeLimitExceeded"), (hard, "TimeLimitExceeded")):
        letter = wait_until(
            lambda r=result: DeadLetter.objects.filter(task_id=r.id).first(), timeout=20
        )
        assert letter.reason == "timeout"
        assert letter.exception_type.rsplit(".", 1)[-1] == exception
        assert letter.queue == slow
        with pytest.raises(Exception, match="TimeLimitExceeded"):
            result.get(timeout=10, propagate=True)
