"""The library's step in Celery's consumer blueprint (added at ``worker_init``).

Two things only a consumer step can do:

- ``register_with_event_loop`` runs each time Celery (re)starts its event loop. A lost broker
  connection resets the loop and drops every reader; the amortized-completion writer's reader
  (which sends the acknowledgements it released) is registered again here.
- ``shutdown`` runs after the pool has stopped, on a warm *and* a cold shutdown (Celery sends
  ``worker_shutdown`` on warm ones only), and before the broker connection closes: the last
  amortized completions are recorded and their held acknowledgements sent, then the other
  main-process steps stop (``worker/upkeep.py``).
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from celery_hygiene.worker import amortized, upkeep


class HygieneConsumerStep(bootsteps.StartStopStep):
    # After the task consumer: shut down (reverse order) while its channel is still open.
    requires = ("celery.worker.consumer.tasks:Tasks",)
    name = "celery_hygiene.worker.consumer_step.HygieneConsumerStep"

    def register_with_event_loop(self, parent: Any, hub: Any) -> None:
        amortized.register_with_event_loop(hub)

    def shutdown(self, parent: Any) -> None:
        upkeep.stop(getattr(parent, "hostname", None))


def install(worker: Any) -> None:
    """``worker_init``: add the step to the worker's app before its consumer is built."""
    app = getattr(worker, "app", None)
    if app is not None:
        app.steps["consumer"].add(HygieneConsumerStep)
