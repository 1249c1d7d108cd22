"""The project's own test settings: tasks run eagerly, in the test's process."""

from .base import *  # noqa: F403

CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
