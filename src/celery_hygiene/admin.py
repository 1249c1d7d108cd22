"""Admin registrations; each concern keeps its admin in its own module, imported here."""

from .deadletter_admin import DeadLetterAdmin  # noqa: F401  (registers the dead-letter browser)
from .watchdog_admin import TaskDurationFlagAdmin, TaskRunStatsAdmin  # noqa: F401  (watchdog)
