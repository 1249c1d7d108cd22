"""The signals' documented payloads (``celery_hygiene.signals.*Payload``) are what is sent."""

from __future__ import annotations

from typing import Any

import pytest

from celery_hygiene import signals
from celery_hygiene.testing import clear_claims


@pytest.fixture
def eager_app():
    from tests.celery_app import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield app
    app.conf.task_always_eager = False
    app.conf.task_eager_propagates = False
    clear_claims()


@pytest.mark.django_db
def test_duplicate_and_mismatch_send_exactly_their_payload(eager_app):
    from tests.testapp import tasks

    received: dict[str, list[dict[str, Any]]] = {"duplicate": [], "mismatch": []}

    def on_duplicate(sender: Any, **kwargs: Any) -> None:
        received["duplicate"].append(kwargs)

    def on_mismatch(sender: Any, **kwargs: Any) -> None:
        received["mismatch"].append(kwargs)

    signals.task_duplicate.connect(on_duplicate)
    signals.task_claim_mismatch.connect(on_mismatch)
    try:
        tasks.race_effect.delay("payload-1", 1).get()
        tasks.race_effect.delay("payload-1", 1).get()  # a duplicate
        tasks.race_effect.delay("payload-1", 2).get()  # same entity, other arguments
    finally:
        signals.task_duplicate.disconnect(on_duplicate)
        signals.task_claim_mismatch.disconnect(on_mismatch)
    for name, payload in (
        ("duplicate", signals.TaskDuplicatePayload),
        ("mismatch", signals.TaskClaimMismatchPayload),
    ):
        assert len(received[name]) == 1, name
        kwargs = dict(received[name][0])
        assert kwargs.pop("signal") is not None
        assert set(kwargs) == set(payload.__annotations__), name
        assert all(isinstance(value, str) and value for value in kwargs.values()), kwargs
