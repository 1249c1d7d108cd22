"""Fleet-wide hygiene changes nothing else (issue 23): a task that gets HygieneTask through
``base=`` or the app's ``task_cls`` without choosing a policy keeps Celery's own retries, and
gains a dead letter for its final failure. Through real workers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from celery import Celery

from celery_hygiene import HygieneTask, RetryPolicy, hygienic_task
from celery_hygiene.failures.retry import DEFAULT_POLICY
from celery_hygiene.models import DeadLetter
from tests.conftest import declare_queue, delete_queue, wait_until
from tests.testapp import tasks_fleet as t
from tests.testapp.models import Attempt, SideEffect
from tests.workers import WorkerProcess


def _dead_letters(task_id: str, timeout: float = 60) -> list[DeadLetter]:
    wait_until(lambda: DeadLetter.objects.filter(task_id=task_id).exists(), timeout=timeout)
    return list(DeadLetter.objects.filter(task_id=task_id))


def _runs(task: str, key: str) -> int:
    return Attempt.objects.filter(task=task, key=key).count()


# -- which policy ------------------------------------------------------------------------------


def _app() -> Celery:
    return Celery("fleet-unit", set_as_current=False)


def test_no_autoretry_for_means_no_automatic_retry() -> None:
    policy = t.plain_fails.hygiene_policy()
    assert t.plain_fails.hygiene_retry is None
    assert policy.retry_on == ()
    assert policy.decide(attempt=1, exc=ValueError("x")).retry is False
    assert policy.decide(attempt=1, exc=ValueError("x")).reason == "gave_up"


def test_autoretry_options_become_the_same_policy_as_celerys() -> None:
    policy = t.autoretry_io.hygiene_policy()
    assert policy.max_attempts == 2 and policy.retry_on == (OSError,)
    assert policy.decide(attempt=1, exc=OSError("x")).countdown == pytest.approx(0.2)
    assert policy.decide(attempt=2, exc=OSError("x")).reason == "exhausted"
    assert policy.decide(attempt=1, exc=ValueError("x")).reason == "gave_up"


def test_celerys_backoff_retry_kwargs_and_dont_autoretry_for() -> None:
    app = _app()

    @app.task(
        base=HygieneTask,
        shared=False,
        autoretry_for=(ConnectionError,),
        dont_autoretry_for=(ConnectionRefusedError,),
        retry_backoff=2,
        retry_backoff_max=30,
        retry_jitter=False,
        retry_kwargs={"max_retries": 4},
    )
    def backoff() -> None: ...

    policy = backoff.hygiene_policy()
    assert policy.max_attempts == 5  # retry_kwargs' max_retries wins, as in Celery
    assert [policy.countdown(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert policy.decide(attempt=1, exc=ConnectionRefusedError()).reason == "gave_up"

    @app.task(
        base=HygieneTask, shared=False, autoretry_for=(KeyError,), retry_kwargs={"countdown": 7}
    )
    def fixed() -> None: ...

    assert fixed.hygiene_policy().max_attempts == 4  # Celery's default max_retries=3
    assert fixed.hygiene_policy().countdown(1) == 7

    # retry_kwargs={"max_retries": None} means "the task's own" to Task.retry, not forever.
    @app.task(
        base=HygieneTask,
        shared=False,
        autoretry_for=(KeyError,),
        max_retries=2,
        retry_kwargs={"max_retries": None},
    )
    def inherits() -> None: ...

    assert inherits.celery_retries().policy.max_attempts == 3
    assert inherits.celery_retries().differences == ()


def test_forever_is_held_to_the_default_policys_cap_without_an_import_error() -> None:
    app = _app()

    @app.task(base=HygieneTask, shared=False, autoretry_for=(KeyError,), max_retries=None)
    def forever() -> None: ...

    retries = forever.celery_retries()
    assert retries.policy.max_attempts == DEFAULT_POLICY.max_attempts
    assert retries.retry_cap == DEFAULT_POLICY.max_attempts - 1
    assert any("max_retries=None" in note for note in retries.differences)


def test_an_explicit_choice_and_the_decorators_default() -> None:
    app = _app()
    chosen = RetryPolicy(max_attempts=3)

    @app.task(base=HygieneTask, shared=False, hygiene_retry=chosen, autoretry_for=(KeyError,))
    def explicit() -> None: ...

    @app.task(base=HygieneTask, shared=False, hygiene_retry="default")
    def default() -> None: ...

    @hygienic_task(app=app, shared=False)
    def decorated() -> None: ...

    assert explicit.hygiene_policy() is chosen
    assert default.hygiene_policy() == DEFAULT_POLICY
    assert decorated.hygiene_retry == "default"
    assert decorated.hygiene_policy() == DEFAULT_POLICY  # 5 attempts, every Exception


def test_a_retry_delay_without_autoretry_for_still_means_no_automatic_retry() -> None:
    app = _app()

    @app.task(
        base=HygieneTask,
        shared=False,
        default_retry_delay=60,
        retry_kwargs={"countdown": 5, "queue": "elsewhere"},
    )
    def delayed() -> None: ...

    retries = delayed.celery_retries()
    assert retries.policy.retry_on == () and retries.retry_cap == 3
    assert delayed.hygiene_policy().decide(attempt=1, exc=RuntimeError()).reason == "gave_up"
    [note] = retries.differences
    assert "retry_kwargs ['queue'] are not applied to automatic retries" in note


def test_eager_mode_keeps_celerys_own_autoretry() -> None:
    app = _app()
    app.conf.task_always_eager = True
    runs: list[int] = []

    @app.task(
        base=HygieneTask,
        shared=False,
        autoretry_for=(KeyError,),
        max_retries=2,
        default_retry_delay=0,
    )
    def flaky() -> str:
        runs.append(1)
        if len(runs) < 3:
            raise KeyError("not yet")
        return "done"

    assert flaky.apply().get() == "done"
    assert len(runs) == 3


# -- through a real worker ---------------------------------------------------------------------

worker_test = pytest.mark.worker


@worker_test
def test_base_hygiene_task_without_retry_options_runs_once_and_dead_letters(
    worker: WorkerProcess, queue_name: str
) -> None:
    result = t.plain_fails.apply_async(("p1",), queue=queue_name)
    [dead] = _dead_letters(result.id)
    assert dead.reason == "gave_up" and dead.attempts == 1
    assert dead.exception_type == "ValueError" and "plain failure p1" in dead.traceback
    assert dead.args == ["p1"]
    worker.wait_for_log(f"task_dead_lettered task=fleet.plain_fails id={result.id}")
    assert _runs("fleet.plain_fails", "p1") == 1
    assert "task_retry_scheduled task=fleet.plain_fails" not in worker.log()


@worker_test
def test_autoretry_for_io_runs_twice_on_io_and_once_on_value_error(
    worker: WorkerProcess, queue_name: str
) -> None:
    io = t.autoretry_io.apply_async(("a-io", "io"), queue=queue_name)
    value = t.autoretry_io.apply_async(("a-value", "value"), queue=queue_name)
    [io_dead] = _dead_letters(io.id)
    [value_dead] = _dead_letters(value.id)
    assert (io_dead.reason, io_dead.attempts, io_dead.exception_type) == ("exhausted", 2, "OSError")
    assert (value_dead.reason, value_dead.attempts) == ("gave_up", 1)
    assert value_dead.exception_type == "ValueError"
    assert _runs("fleet.autoretry_io", "a-io") == 2
    assert _runs("fleet.autoretry_io", "a-value") == 1
    # The retry went through the policy (one retry, Celery's default_retry_delay as countdown).
    assert f"task_retry_scheduled task=fleet.autoretry_io id={io.id} attempt=1 " in worker.log()
    assert "countdown=0.2 exc=OSError" in worker.log()


@worker_test
def test_self_retry_is_capped_by_max_retries_as_in_celery(
    worker: WorkerProcess, queue_name: str
) -> None:
    capped = t.self_retry.apply_async(("s1",), queue=queue_name)
    forever = t.self_retry_forever.apply_async(("s2",), queue=queue_name)
    [dead] = _dead_letters(capped.id)
    assert _runs("fleet.self_retry", "s1") == 3  # max_retries=2: three runs
    assert (dead.reason, dead.attempts, dead.exception_type) == ("exhausted", 3, "ConnectionError")
    # max_retries=None: Celery would retry forever; held to the default policy's 5 attempts.
    [held] = _dead_letters(forever.id)
    assert _runs("fleet.self_retry_forever", "s2") == DEFAULT_POLICY.max_attempts
    assert held.reason == "exhausted" and held.exception_type.endswith("MaxRetriesExceededError")
    assert SideEffect.objects.filter(entity="s2", kind="forever-capped").count() == 1


@worker_test
def test_a_message_that_keeps_killing_its_worker_ends_as_a_dead_letter(
    worker: WorkerProcess, queue_name: str
) -> None:
    result = t.kills_its_worker.apply_async(("k1",), queue=queue_name)
    [dead] = _dead_letters(result.id, timeout=90)
    assert dead.reason == "worker_lost"
    # max_retries=1 (two attempts). The first delivery records nothing (the happy path writes
    # nothing), so it is not counted: max_attempts + 1 runs, then the next delivery is refused.
    assert _runs("fleet.kills_its_worker", "k1") == 3
    assert dead.attempts == 3


@pytest.fixture
def fleet_worker(worker_factory: Callable[..., WorkerProcess], queue_name: str) -> WorkerProcess:
    from tests.fleet_celery_app import app

    declare_queue(app, queue_name)
    return worker_factory(queue_name, concurrency=2, app="tests.fleet_celery_app")


@worker_test
def test_through_a_task_cls_with_a_base_of_its_own(
    fleet_worker: WorkerProcess, queue_name: str
) -> None:
    from tests.testapp import fleet_tasks as f
    from tests.testapp.fleet_base import FleetTask, ProjectBaseTask

    assert isinstance(f.autoretry_io, FleetTask) and isinstance(f.autoretry_io, ProjectBaseTask)
    plain = f.plain_fails.apply_async(("tc-plain",), queue=queue_name)
    io = f.autoretry_io.apply_async(("tc-io", "io"), queue=queue_name)
    value = f.autoretry_io.apply_async(("tc-value", "value"), queue=queue_name)
    hooked = f.base_hook.apply_async(("tc-hook",), queue=queue_name)

    [plain_dead] = _dead_letters(plain.id)
    [io_dead] = _dead_letters(io.id)
    [value_dead] = _dead_letters(value.id)
    [hook_dead] = _dead_letters(hooked.id)  # the project base's before_start ran first
    assert (plain_dead.reason, plain_dead.attempts) == ("gave_up", 1)
    assert (io_dead.reason, io_dead.attempts, io_dead.exception_type) == ("exhausted", 2, "OSError")
    assert (value_dead.reason, value_dead.attempts) == ("gave_up", 1)
    assert hook_dead.exception_type == "ValueError"
    assert _runs("fleet.app.plain_fails", "tc-plain") == 1
    assert _runs("fleet.app.autoretry_io", "tc-io") == 2
    assert _runs("fleet.app.autoretry_io", "tc-value") == 1
    delete_queue(f.app, queue_name)


# -- taskhygiene check --tasks: the dry run of the migration -----------------------------------


def _dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    from django.core.management import call_command

    call_command("taskhygiene", "check", "--tasks", "--task", "fleet.*", *args)
    return capsys.readouterr().out


def _block(output: str, task: str) -> str:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{task}  ["))
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines)
    )
    return "\n".join(lines[start:end])


def test_check_tasks_lists_what_hygiene_does_to_each_task(
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = _dry_run(capsys)
    plain = _block(output, "fleet.plain_fails")
    assert "[hygienic, Celery's retries]" in plain
    assert "retries:     no automatic retry (a failure is final); self.retry(): up to 3" in plain
    assert "dead letter: yes, after the final failure" in plain
    assert "differs from Celery" not in plain

    io = _block(output, "fleet.autoretry_io")
    assert "on OSError: up to 2 attempts, countdowns 0.2s each; self.retry(): up to 1 retry" in io

    before = _block(output, "fleet.not_yet_hygienic")
    assert "[plain Celery]" in before
    assert "none today; with task_cls: a dead letter after the final failure" in before
    assert "on ConnectionError: up to 5 attempts, countdowns 1s, 2s, 4s, 8s" in before
    assert "time limits: soft 20s, hard 30s" in before
    assert "! differs from Celery: max_retries=None: Celery retries forever" in before

    moved = _block(output, "fleet.decorated_with_a_delay")
    assert "[hygienic, hygiene policy]" in moved
    assert "on Exception: up to 6 attempts, countdowns 60s each" in moved
    assert "retried only on an explicit self.retry() (no autoretry_for)" in moved
    assert "1 plain Celery (shown as task_cls would run them)" in output
    # The audit still runs after the listing: W010 names the forever task.
    assert "celery_hygiene.W010" in output


def test_check_tasks_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    payload = json.loads(_dry_run(capsys, "--json"))
    plans = {plan["name"]: plan for plan in payload["tasks"]}
    assert plans["fleet.plain_fails"]["kind"] == "hygienic, Celery's retries"
    assert plans["fleet.not_yet_hygienic"]["kind"] == "plain Celery"
    assert plans["fleet.not_yet_hygienic"]["differences"]
    assert any(m["id"] == "celery_hygiene.W010" for m in payload["messages"])
