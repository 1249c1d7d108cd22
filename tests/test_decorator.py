"""Declaring tasks: errors at import time, Celery options passed through, eager mode."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from celery import Celery, Task

from celery_hygiene import HygieneTask, idempotent_task
from celery_hygiene.claims.spec import IdempotencySpec
from celery_hygiene.exceptions import EntityKeyError, HygieneConfigurationError
from celery_hygiene.models import ClaimStatus, TaskClaim
from celery_hygiene.testing import clear_claims
from tests.testapp.models import SideEffect


def test_entity_that_names_no_parameter_fails_at_decoration_naming_the_task():
    with pytest.raises(HygieneConfigurationError) as info:

        @idempotent_task(entity="order")
        def charge(order_id: int) -> None: ...

    assert "test_decorator" in str(info.value) and "charge" in str(info.value)
    assert "'order' names no parameter" in str(info.value)
    assert "order_id" in str(info.value)


def test_bound_task_entity_skips_self():
    with pytest.raises(HygieneConfigurationError, match="names no parameter"):

        @idempotent_task(entity="self", bind=True)
        def bound(self, order_id: int) -> None: ...  # noqa: ANN001


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_mismatch": "ignore"}, "on_mismatch"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"operation": " "}, "operation"),
        ({"expected_duration": -1}, "expected_duration"),
        ({"base": object}, "celery.Task subclass"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(HygieneConfigurationError, match=message):

        @idempotent_task(entity="key", **options)
        def task(key: str) -> None: ...


def test_explicit_app_and_user_base_class_are_kept():
    app = Celery("explicit", set_as_current=False)

    class AuditedTask(Task):
        audited = True

    @idempotent_task(entity="key", app=app, base=AuditedTask, name="explicit.t", acks_late=True)
    def task(key: str) -> str:
        return key

    assert "explicit.t" in app.tasks
    registered = app.tasks["explicit.t"]
    assert isinstance(registered, HygieneTask) and isinstance(registered, AuditedTask)
    assert registered.acks_late is True and registered.audited is True


@pytest.fixture
def eager_app():
    from tests.celery_app import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield app
    app.conf.task_always_eager = False
    app.conf.task_eager_propagates = False


@pytest.mark.django_db
def test_eager_mode_enforces_claims_and_returns_the_stored_result(eager_app):
    """Users' own unit tests often run tasks eagerly; the decorator must not break them."""
    from tests.testapp import tasks

    assert tasks.race_effect.delay("eager-1", 1).get() == "eager-1"
    assert tasks.race_effect.delay("eager-1", 1).get() == "eager-1"
    assert SideEffect.objects.filter(entity="eager-1", kind="race").count() == 1
    assert TaskClaim.objects.get(entity="eager-1").status == ClaimStatus.SUCCEEDED

    clear_claims()
    tasks.race_effect.delay("eager-1", 1).get()
    assert SideEffect.objects.filter(entity="eager-1", kind="race").count() == 2


@pytest.mark.django_db
def test_eager_failure_propagates_and_frees_the_key(eager_app):
    """The developer's fix-and-retry loop: a failed eager run leaves the key free at once."""
    from tests.testapp import tasks_retry

    with pytest.raises(ConnectionError):
        tasks_retry.charge_with_policy.delay(900, "always").get()
    assert not TaskClaim.objects.filter(entity="900").exists()
    with pytest.raises(ConnectionError):  # the same call runs the body again, no ClaimBusy
        tasks_retry.charge_with_policy.delay(900, "always").get()
    # ... and so does the fixed call (other arguments, same key), without clear_claims().
    assert tasks_retry.charge_with_policy.delay(900, "ok").get() == "charged:900"
    assert TaskClaim.objects.get(entity="900").status == ClaimStatus.SUCCEEDED


@pytest.mark.django_db
def test_direct_call_is_a_plain_function_call():
    """Calling the task object like a function runs the body, as Celery does, without a claim."""
    from tests.testapp import tasks

    assert tasks.race_effect("direct-1", 1) == "direct-1"
    assert tasks.race_effect("direct-1", 1) == "direct-1"
    assert SideEffect.objects.filter(entity="direct-1").count() == 2
    assert not TaskClaim.objects.filter(entity="direct-1").exists()


@pytest.mark.django_db
def test_a_failing_signal_receiver_never_breaks_the_task(eager_app, caplog):
    from celery_hygiene.signals import task_duplicate
    from tests.testapp import tasks

    def broken_receiver(**kwargs):  # noqa: ANN003, ANN202
        raise RuntimeError("receiver bug")

    task_duplicate.connect(broken_receiver)
    try:
        tasks.race_effect.delay("robust-1", 1).get()
        assert tasks.race_effect.delay("robust-1", 1).get() == "robust-1"
    finally:
        task_duplicate.disconnect(broken_receiver)
    assert "signal_receiver_failed" in caplog.text and "receiver bug" in caplog.text


def test_entity_passed_through_kwargs_is_found_only_there():
    from celery_hygiene.exceptions import EntityKeyError

    def sync(payload: dict, **extra: object) -> None: ...

    spec = _spec_for(sync, entity="order_id")
    bound = spec.bind_arguments("t", ({"order_id": 1},), {"order_id": 2})
    assert spec.entity_key("t", bound) == "2"
    # A dict argument holding the same key is data, not the entity.
    with pytest.raises(EntityKeyError, match="'order_id' was not passed"):
        spec.entity_key("t", spec.bind_arguments("t", ({"order_id": 1},), {}))


@pytest.mark.django_db(transaction=True)
def test_replay_in_eager_settings_is_refused_clearly(eager_app):
    """Eager local settings: no worker would see a replay; say so instead of "replayed"."""
    from celery_hygiene.failures import replay
    from celery_hygiene.models import DeadLetterStatus
    from tests.test_deadletter_cli import make

    dead = make(args=["eager-replay"], kwargs={})
    refused = replay.replay(dead.pk, app=eager_app)
    assert refused.outcome is replay.Outcome.EAGER
    assert "task_always_eager is on" in refused.message and "--force" in refused.message
    dead.refresh_from_db()
    assert dead.status == DeadLetterStatus.PENDING


@pytest.mark.parametrize(
    ("call_args", "call_kwargs"),
    [
        ((), {"order_id": 7}),
        ((7,), {}),
        ((7, "x"), {}),
        ((7,), {"note": "y", "flag": True}),
        ((), {"order_id": 7, "note": "z"}),
        ((7, "x", "extra"), {}),  # too many positionals
        ((7,), {"order_id": 8}),  # given twice
        ((), {}),  # missing the required one
        ((), {"order_id": 7, "unknown": 1}),  # not a parameter
        ((7, "x"), {"flag": False}),
    ],
)
def test_fast_argument_binding_agrees_with_inspect(call_args, call_kwargs):
    """The claim key binds arguments without inspect for plain signatures; the result (or the
    refusal, raised by inspect with its message) must be exactly what Signature.bind gives."""
    def body(order_id: int, note: str = "n", *, flag: bool = False) -> None: ...

    spec = _spec_for(body, entity="order_id")
    assert spec.plain is not None
    try:
        expected = spec.signature.bind(*call_args, **call_kwargs)
    except TypeError:
        with pytest.raises(EntityKeyError):
            spec.bind_arguments("t", call_args, call_kwargs)
        return
    expected.apply_defaults()
    assert spec.bind_arguments("t", call_args, call_kwargs) == dict(expected.arguments)


def _spec_for(fun: Callable[..., object], *, entity: str) -> IdempotencySpec:
    """The IdempotencySpec @idempotent_task(entity=...) builds for ``fun``, with defaults."""
    return IdempotencySpec.build(
        fun,
        entity=entity,
        operation=None,
        atomic=False,
        lease_seconds=None,
        on_mismatch="warn",
        bind=False,
    )
