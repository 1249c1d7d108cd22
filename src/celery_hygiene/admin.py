"""Admin registrations; each concern keeps its admin in its own module, imported here."""

from celery_hygiene.ops.deadletter_admin import DeadLetterAdmin  # noqa: F401  (registers the dead-letter browser)
from celery_hygiene.ops.intent_admin import EnqueueIntentAdmin  # noqa: F401  (delay_on_commit)
from celery_hygiene.ops.watchdog_admin import TaskDurationFlagAdmin, TaskRunStatsAdmin  # noqa: F401  (watchdog)
