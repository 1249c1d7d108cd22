"""tests.settings for a production-like process: the Celery app is the lazy project app."""

from tests.settings import *  # noqa: F403

CELERY_HYGIENE = {**CELERY_HYGIENE, "CELERY_APP": "tests.lazy_celery_app.app"}  # noqa: F405
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
