"""Duration watchdog: real workers, a 1 s threshold (``expected_duration=1`` on the test tasks).

What a user relies on: a slow run is flagged while it still runs (record, log line, signal), once;
short runs and runs under the default threshold are not; the final duration lands on the record;
this holds for the prefork, solo and threads pools; the report shows runs and percentiles.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import weakref
from collections.abc import Callable

import pytest
from celery import Celery
from celery.worker import state
from django.core.management import call_command
from django.utils import timezone

from celery_hygiene.models import TaskDurationFlag, TaskRunStats
from celery_hygiene.ops.report import duration_report
from celery_hygiene.worker import runstats
from celery_hygiene.worker.watchdog import Watchdog
from tests.conftest import wait_until
from tests.testapp.models import SideEffect
from tests.workers import WorkerProcess

pytestmark = pytest.mark.worker


def _flag_while_running(result) -> TaskDurationFlag:  # noqa: ANN001 - an AsyncResult
    """Wait for the flag record and prove it was written before the run ended."""
    flag = wait_until(
        lambda: TaskDurationFlag.objects.filter(task_id=result.id).first(), timeout=20
    )
    assert not result.ready(), "the run ended before it was flagged"
    return flag  # type: ignore[return-value]


def test_prefork_flags_slow_runs_once_while_running(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, hygiene_app: Celery
) -> None:
    worker = worker_factory(queue_name, concurrency=4)
    send = hygiene_app.send_task
    slow = send("watchdog.sleepy", args=[3], queue=queue_name)
    hygienic = send("watchdog.hygienic_sleepy", args=[2.5], queue=queue_name)
    quick = [send("watchdog.sleepy", args=[0.1], queue=queue_name) for _ in range(3)]
    default = send("watchdog.default_threshold", args=[2], queue=queue_name)

    flag = _flag_while_running(slow)
    assert flag.task_name == "watchdog.sleepy"
    assert flag.worker_hostname == worker.hostname
    assert flag.threshold == 1.0
    assert flag.final_duration is None
    assert 0 < flag.over_by < 2
    assert flag.started_at <= flag.flagged_at
    _flag_while_running(hygienic)  # expected_duration through the hygiene decorator

    for result in [slow, hygienic, *quick, default]:
        result.get(timeout=20)
    quick_ids = {r.id for r in quick} | {default.id}
    assert not TaskDurationFlag.objects.filter(task_id__in=quick_ids).exists()

    flag = wait_until(
        lambda: TaskDurationFlag.objects.filter(
            task_id=slow.id, final_duration__isnull=False
        ).first()
    )
    assert 2.9 < flag.final_duration < 3.5  # measured by the process that ran it
    assert flag.ended_at is not None
    assert TaskDurationFlag.objects.filter(task_id=slow.id).count() == 1

    log = worker.log()
    assert log.count(f"task_over_duration task=watchdog.sleepy id={slow.id}") == 1
    assert "threshold=1.0" in log
    signal_rows = SideEffect.objects.filter(kind="over_duration", entity=slow.id)
    assert [row.payload["worker"] for row in signal_rows] == [worker.hostname]

    # Statistics reach the database when the pool children exit (warm shutdown).
    worker.stop()
    report = {row.task_name: row for row in duration_report()}
    sleepy = report["watchdog.sleepy"]
    assert sleepy.runs == 4
    assert sleepy.flagged == 1
    assert 0.09 < sleepy.p50 < 0.2  # body + result store, within 5 %
    assert 2.9 < sleepy.max < 3.5
    assert 2.7 < sleepy.p95 <= sleepy.max
    assert report["watchdog.default_threshold"].flagged == 0
    assert report["watchdog.default_threshold"].runs == 1


def test_solo_pool_flags_a_task_busy_in_the_main_thread(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, hygiene_app: Celery
) -> None:
    """The solo pool runs the task on the main thread, the one the event loop would need."""
    worker_factory(queue_name, pool="solo", concurrency=1)
    busy = hygiene_app.send_task("watchdog.gil_hog", args=[3], queue=queue_name)
    flag = _flag_while_running(busy)
    assert flag.task_name == "watchdog.gil_hog"
    busy.get(timeout=20)
    # task_postrun writes it just after the result is stored: poll.
    flag = wait_until(
        lambda: TaskDurationFlag.objects.filter(
            task_id=busy.id, final_duration__isnull=False
        ).first()
    )
    assert 2.9 < flag.final_duration < 3.5


def test_threads_pool_flags_concurrent_slow_runs(
    worker_factory: Callable[..., WorkerProcess], queue_name: str, hygiene_app: Celery
) -> None:
    worker = worker_factory(queue_name, pool="threads", concurrency=4)
    slow = [hygiene_app.send_task("watchdog.sleepy", args=[3], queue=queue_name) for _ in range(2)]
    quick = hygiene_app.send_task("watchdog.sleepy", args=[0.1], queue=queue_name)
    try:
        for result in slow:
            _flag_while_running(result)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.log()[-3000:]}") from exc
    quick.get(timeout=20)
    for result in slow:
        result.get(timeout=20)
    assert not TaskDurationFlag.objects.filter(task_id=quick.id).exists()
    assert TaskDurationFlag.objects.filter(task_id__in=[r.id for r in slow]).count() == 2


class _FakeTask:
    name = "fake.task"
    expected_duration = 5


class _FakeRequest:
    """What the watchdog reads from celery.worker.request.Request."""

    def __init__(self, task_id: str, started: float) -> None:
        self.id = task_id
        self.name = "fake.task"
        self.task = _FakeTask()
        self.time_start = started
        self.worker_pid = 4242


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_process_died_gets_an_estimated_duration() -> None:
    """No task_postrun comes from a killed child: the watchdog closes the record itself."""
    watchdog = Watchdog("unit@host")
    start = time.time() - 10
    request = _FakeRequest("dead-child", start)
    state.active_requests.add(request)
    try:
        watchdog.tick(now=start + 6)
        watchdog.tick(now=start + 7)  # still running: not flagged twice
        flag = TaskDurationFlag.objects.get(task_id="dead-child")
        assert flag.over_by == pytest.approx(1.0)
        assert flag.worker_pid == 4242
    finally:
        state.active_requests.discard(request)
    watchdog.tick(now=start + 8)
    flag.refresh_from_db()
    assert flag.final_duration == pytest.approx(8.0)
    assert TaskDurationFlag.objects.count() == 1
    assert watchdog.flags == {}
    assert weakref.ref(request)() is request  # kept alive by this test only


def test_percentiles_read_back_within_five_percent() -> None:
    from collections import Counter

    durations = [0.01 * i for i in range(1, 101)]  # 10 ms .. 1 s
    histogram = Counter(runstats.bucket_of(d) for d in durations)
    assert runstats.percentile(histogram, 0.5) == pytest.approx(0.5, rel=0.05)
    assert runstats.percentile(histogram, 0.95) == pytest.approx(0.95, rel=0.05)
    assert runstats.percentile(Counter(), 0.5) is None


@pytest.mark.django_db
def test_report_command_prints_worst_tasks_first() -> None:
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    for name, durations in {"shop.fast": [0.05] * 10, "shop.slow": [90.0, 120.0]}.items():
        window = runstats.Window()
        for seconds in durations:
            window.add(seconds)
        TaskRunStats.objects.create(
            task_name=name,
            window_start=hour,
            worker="w1:1",
            runs=window.runs,
            total_seconds=window.total,
            max_seconds=window.maximum,
            histogram={str(k): v for k, v in window.histogram.items()},
        )
    TaskDurationFlag.objects.create(
        task_name="shop.slow",
        task_id="x",
        worker_hostname="w1",
        started_at=hour,
        threshold=60,
        flagged_at=timezone.now(),
        over_by=1,
    )
    old = timezone.now() - dt.timedelta(days=30)
    TaskRunStats.objects.create(
        task_name="shop.ancient",
        window_start=old,
        worker="w1:1",
        runs=1,
        max_seconds=1,
        histogram={"72": 1},
    )

    out = io.StringIO()
    call_command("taskhygiene", "report", "--since", "1d", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["TASK", "RUNS", "P50", "P95", "MAX", "FLAGGED"]
    assert lines[1].split() == [
        "shop.slow",
        "2",
        "88.4s",
        "117.7s",
        "120.0s",
        "1",
    ]  # p50, p95 within 5 %
    assert lines[2].split()[:2] == ["shop.fast", "10"]
    assert "shop.ancient" not in out.getvalue()

    out = io.StringIO()
    call_command("taskhygiene", "report", "--task", "shop.f*", "--json", stdout=out)
    rows = json.loads(out.getvalue())
    assert [row["task_name"] for row in rows] == ["shop.fast"]
    assert rows[0]["p50"] == pytest.approx(0.05, rel=0.05)


@pytest.mark.django_db
def test_admin_shows_the_report_and_flagged_runs(admin_client) -> None:  # noqa: ANN001
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    TaskRunStats.objects.create(
        task_name="shop.slow",
        window_start=hour,
        worker="w1:1",
        runs=2,
        max_seconds=120.0,
        histogram={str(runstats.bucket_of(90.0)): 1, str(runstats.bucket_of(120.0)): 1},
    )
    TaskDurationFlag.objects.create(
        task_name="shop.slow",
        task_id="abc",
        worker_hostname="w1",
        started_at=hour,
        threshold=60,
        flagged_at=timezone.now(),
        over_by=1,
    )
    page = admin_client.get("/admin/celery_hygiene/taskrunstats/?since=1d").content.decode()
    assert "shop.slow" in page and "120.000" in page
    bad = admin_client.get("/admin/celery_hygiene/taskrunstats/?since=yesterday").content.decode()
    assert "malformed time" in bad
    flags = admin_client.get("/admin/celery_hygiene/taskdurationflag/").content.decode()
    assert "abc" in flags


@pytest.mark.django_db
def test_the_report_says_how_fresh_its_statistics_are() -> None:
    out = io.StringIO()
    call_command("taskhygiene", "report", "--since", "1d", stdout=out)
    assert "No task runs recorded since" in out.getvalue()
    assert "written by each worker process every 60 s (RUN_STATS_FLUSH_SECONDS)" in out.getvalue()
    assert "Last write: none yet." in out.getvalue()

    TaskRunStats.objects.create(
        task_name="shop.fresh",
        window_start=timezone.now().replace(minute=0, second=0, microsecond=0),
        worker="w1:1",
        runs=1,
        max_seconds=1,
        histogram={"72": 1},
    )
    out = io.StringIO()
    call_command("taskhygiene", "report", "--since", "1d", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:2] == ["shop.fresh", "1"]
    assert lines[-1].startswith("Run statistics are written by each worker process every 60 s")
    assert "Last write: 20" in lines[-1] and " s ago)." in lines[-1]
