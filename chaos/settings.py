"""Settings of the fault-injection project (``make chaos``); everything comes from the environment.

``chaos/run.py`` sets these variables for itself and for the worker subprocesses it starts:

- ``CHAOS_DB_HOST`` / ``CHAOS_DB_PORT`` / ``CHAOS_DB_NAME`` / ``CHAOS_DB_USER``: the private
  PostgreSQL cluster (port 5440), or the private PgBouncer in front of it (port 6441).
- ``CHAOS_PGBOUNCER=1``: Django behind PgBouncer in transaction mode.
- ``CHAOS_BROKER_URL``: the private RabbitMQ vhost ``chaos`` or the private Redis on 6391.
- ``CHAOS_LEASE_SECONDS``, ``CHAOS_BODY_MIN_MS``, ``CHAOS_BODY_MAX_MS``: read by the tasks.
- ``CHAOS_AMORTIZED=1`` (``run.py --amortized``): ``AMORTIZED_COMPLETION``, the worker's main
  process records the pool processes' completions in batches.
"""

import os

SECRET_KEY = "celery-hygiene-chaos"  # noqa: S105 - local fault-injection project only
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "celery_hygiene",
    "chaos.app",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("CHAOS_DB_NAME", "chaos"),
        "HOST": os.environ.get("CHAOS_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("CHAOS_DB_PORT", "5440"),
        "USER": os.environ.get("CHAOS_DB_USER", "postgres"),
        "PASSWORD": os.environ.get("CHAOS_DB_PASSWORD", ""),
        # Workers must not keep connections across tasks; a restarted PostgreSQL then costs
        # only the tasks that were using a connection at that moment.
        "CONN_MAX_AGE": 0,
        "DISABLE_SERVER_SIDE_CURSORS": os.environ.get("CHAOS_PGBOUNCER") == "1",
        "OPTIONS": {"connect_timeout": 5},
    }
}

BROKER_URL = os.environ.get("CHAOS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/chaos")
CELERY_BROKER_URL = BROKER_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CHAOS_QUEUE", "chaos")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_HEARTBEAT = 0
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Keep reconnecting through a broker cut (the default gives up after 100 tries).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if BROKER_URL.startswith("redis"):
    # A SIGKILLed worker's unacked message comes back after visibility_timeout, at the next
    # restore scan: every 5 s here (kombu's default is interval 10 s x throttle 10). A worker
    # killed during a scan leaves the scan's mutex behind until it expires (kombu's default
    # 300 s, during which nothing is restored): 30 s here.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": 20,
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 30,
    }
else:
    # A publish the broker did not take fails loudly instead of vanishing.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}

CELERY_HYGIENE = {
    "DEFER_MAX_SECONDS": 10,
    "AMORTIZED_COMPLETION": os.environ.get("CHAOS_AMORTIZED") == "1",
    # --enqueue on-commit: the workers' relay re-sends an intent no run has claimed after this
    # long (the run's drain must outlast it; docs/enqueue.md).
    "ENQUEUE_RESEND_SECONDS": 15,
    "ENQUEUE_SWEEP_SECONDS": 2,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"celery_hygiene": {"handlers": ["console"], "level": "INFO"}},
}
