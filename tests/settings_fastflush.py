"""The test settings with run statistics flushed every second (tests/test_runstats_timer.py)."""

from tests.settings import *  # noqa: F403
from tests.settings import CELERY_HYGIENE

CELERY_HYGIENE = {**CELERY_HYGIENE, "RUN_STATS_FLUSH_SECONDS": 1}
