"""Settings of the benchmark project: one scratch database, RabbitMQ, no result backend.

Everything the variants share is fixed here, so the only difference between two runs is the task
decorator. Services come from the environment with this project's local defaults.
"""

import os

SECRET_KEY = "celery-hygiene-bench"  # noqa: S105 - benchmark only
# DEBUG=True would make Django keep every query in memory: a cost only the DB-heavy variants pay.
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "benchproject.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "celery_hygiene",
    "benchapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("BENCH_DB_NAME", "celery_hygiene_bench"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        # Persistent connections, as a production worker would run: every variant's body writes
        # one row, so all of them keep one connection per pool process. No health checks (they
        # would add a SELECT 1 round trip to every task, for all variants alike).
        "CONN_MAX_AGE": 600,
        "CONN_HEALTH_CHECKS": False,
    }
}

# What-if runs (run.py --synchronous-commit off): the same for every variant, session-level only.
if os.environ.get("BENCH_SYNCHRONOUS_COMMIT"):
    DATABASES["default"]["OPTIONS"] = {
        "options": f"-c synchronous_commit={os.environ['BENCH_SYNCHRONOUS_COMMIT']}"
    }

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

CELERY_BROKER_URL = os.environ.get("HYGIENE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CELERY_BROKER_HEARTBEAT = 0
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# No result backend: storing results would add a Redis write to every variant and measure Redis.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("BENCH_QUEUE", "hygiene-bench")
# Celery's defaults, stated so the configuration is visible in one place.
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = True

# celery-once's configuration (read only by the QueueOnce variant).
CELERY_ONCE = {
    "backend": "celery_once.backends.Redis",
    "settings": {"url": REDIS_URL, "default_timeout": 3600},
}

CELERY_HYGIENE = {
    "DEFAULT_LEASE_SECONDS": 300,
    # run.py starts a second worker with BENCH_PREPARED=1 to compare (docs/benchmarks.md).
    "PREPARED_STATEMENTS": os.environ.get("BENCH_PREPARED") == "1",
    "ASYNC_COMPLETION": os.environ.get("BENCH_ASYNC") == "1",
    "AMORTIZED_COMPLETION": os.environ.get("BENCH_AMORTIZED") == "1",
    "AMORTIZED_COMPLETION_GATHER_MS": float(os.environ.get("BENCH_AMORTIZED_GATHER_MS", "10")),
}

# The "before" comparison: the library at an earlier commit, on its own database (its own
# migrations); the driver truncates and counts there through this alias.
if os.environ.get("BENCH_DB_BEFORE"):
    DATABASES["before"] = {**DATABASES["default"], "NAME": os.environ["BENCH_DB_BEFORE"]}
