"""Settings shared by every environment. Services come from the environment."""

import os

SECRET_KEY = "adoption-project"  # noqa: S105 - a test project
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "config.urls"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "celery_hygiene",
    "shop",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("ADOPT_DB_NAME", "adoption"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "CONN_MAX_AGE": 0,
    }
}

# Celery, read with namespace="CELERY" (config/celery.py).
CELERY_BROKER_URL = os.environ.get("ADOPT_BROKER_URL", "redis://127.0.0.1:6379/12")
# Above every retry countdown and task run here, and short enough that a killed worker's
# messages come back within minutes (audit W040/W041, docs/brokers.md).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 300
CELERY_DB_REUSE_MAX = 100
_queue = os.environ.get("ADOPT_QUEUE", "shop")
CELERY_HYGIENE_QUEUES = {_queue: {"tasks": ["shop.*"], "default": True}}
CELERY_BEAT_SCHEDULE = {
    "nightly-cleanup": {
        "task": "shop.tasks.nightly_cleanup",
        "schedule": float(os.environ.get("ADOPT_CLEANUP_EVERY", 24 * 3600)),
    },
}

CELERY_HYGIENE = {
    "CELERY_APP": "config.celery.app",
    # Decorated tasks without retry= or Celery options get this policy; the app's plain
    # @app.task tasks (task_cls) keep their own Celery retries.
    "DEFAULT_RETRY_POLICY": {
        "max_attempts": 3,
        "min_delay": float(os.environ.get("ADOPT_MIN_RETRY_DELAY", 5)),
        "max_delay": float(os.environ.get("ADOPT_MAX_RETRY_DELAY", 300)),
    },
}
