"""Settings for the test suite and for the worker subprocesses it starts.

Services come from the environment (PGHOST/PGPORT/PGUSER/PGPASSWORD, HYGIENE_BROKER_URL,
HYGIENE_REDIS_URL) with this project's local defaults. A worker subprocess is pointed at the
pytest database through HYGIENE_TEST_DB_NAME (pytest-django's ``test_<name>``).
"""

import os

SECRET_KEY = "celery-hygiene-tests"  # noqa: S105 - test only
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "celery_hygiene",
    "tests.testapp",
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

_db_name = os.environ.get("HYGIENE_TEST_DB_NAME")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db_name or os.environ.get("HYGIENE_DB_NAME", "celery_hygiene"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        # Workers must not keep connections across tasks (see the hygiene checks).
        "CONN_MAX_AGE": 0,
    }
}
if os.environ.get("HYGIENE_PGBOUNCER"):
    # Transaction pooling: no server-side cursors (a later statement may land on another
    # server connection). The library needs no other session state (docs/development.md).
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
# A second connection to the same database: tests record attempts through it so the records
# survive the rollback of an atomic task's transaction.
DATABASES["attempts"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}
# A second database of its own (delay_on_commit's using=): pytest-django creates test_<NAME>
# for the tests that ask for it; a worker subprocess gets its name via HYGIENE_TEST_OTHER_DB_NAME.
DATABASES["other"] = {
    **DATABASES["default"],
    "NAME": os.environ.get("HYGIENE_TEST_OTHER_DB_NAME")
    or f"{os.environ.get('HYGIENE_DB_NAME', 'celery_hygiene')}_other",
}
# The claim SQL must also run on SQLite (users' development databases and test suites).
DATABASES["sqlite"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}

CELERY_BROKER_URL = os.environ.get("HYGIENE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CELERY_RESULT_BACKEND = os.environ.get("HYGIENE_REDIS_URL", "redis://127.0.0.1:6379/15")
CELERY_BROKER_HEARTBEAT = 0
# The Redis leg (make test-redis): a short visibility timeout, as users who want quick recovery
# of a killed worker's messages set it, and a short restore mutex: every worker test ends by
# SIGKILLing its workers, and one killed during its restore scan would otherwise block every
# later restore for kombu's default 300 s (docs/brokers.md).
if CELERY_BROKER_URL.startswith("redis"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(os.environ.get("HYGIENE_VISIBILITY_TIMEOUT", "20")),
        "unacked_mutex_expire": 10,
    }
elif os.environ.get("HYGIENE_CONFIRM_PUBLISH"):  # refused publishes, or waits for confirms
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("HYGIENE_TEST_QUEUE", "hygiene-tests")
CELERY_RESULT_EXPIRES = 3600
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

CELERY_HYGIENE: dict[str, object] = {
    "DEFAULT_LEASE_SECONDS": 30,
    "DEFER_MAX_SECONDS": 2,
    "DB_RETRY_MAX_WAIT": 0.5,
    "DB_RETRY_SECONDS": 3,
    "CLAIM_RETRY_MAX_DELAY": 2,
    "OUTBOX_SWEEP_SECONDS": 1,
    "REDIS_RESTORE_SECONDS": 2,
    # delay_on_commit's relay, quick enough for a test to watch it (docs/enqueue.md).
    "ENQUEUE_RESEND_SECONDS": 2,
    "ENQUEUE_RESEND_MAX_DELAY": 4,
    "ENQUEUE_SWEEP_SECONDS": 0.5,
}
if os.environ.get("HYGIENE_DEFAULT_LEASE_SECONDS"):  # one test's worker: short default leases
    CELERY_HYGIENE["DEFAULT_LEASE_SECONDS"] = float(os.environ["HYGIENE_DEFAULT_LEASE_SECONDS"])
if os.environ.get("HYGIENE_ENQUEUE_DATABASES"):  # one test's workers relay a second database
    CELERY_HYGIENE["ENQUEUE_DATABASES"] = os.environ["HYGIENE_ENQUEUE_DATABASES"].split(",")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"celery_hygiene": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
if os.environ.get("HYGIENE_ACCEPT_PICKLE"):  # one test's own worker takes a non-JSON payload
    CELERY_ACCEPT_CONTENT = ["json", "pickle"]
if os.environ.get("HYGIENE_DEADLETTER_FALLBACK"):  # one test's worker uses "reject" (DLX)
    CELERY_HYGIENE["DEADLETTER_FALLBACK"] = os.environ["HYGIENE_DEADLETTER_FALLBACK"]
if os.environ.get("HYGIENE_DB_RETRY_SECONDS"):  # one test's worker rides out a longer outage
    CELERY_HYGIENE["DB_RETRY_SECONDS"] = float(os.environ["HYGIENE_DB_RETRY_SECONDS"])
if os.environ.get("HYGIENE_CLAIM_RETRY_SECONDS"):  # one test's worker: a short claim budget
    CELERY_HYGIENE["CLAIM_RETRY_SECONDS"] = float(os.environ["HYGIENE_CLAIM_RETRY_SECONDS"])
if os.environ.get("HYGIENE_AMORTIZED_COMPLETION"):  # workers hand completions to the main process
    CELERY_HYGIENE["AMORTIZED_COMPLETION"] = True
    CELERY_HYGIENE["AMORTIZED_COMPLETION_GATHER_MS"] = float(
        os.environ.get("HYGIENE_AMORTIZED_GATHER_MS", "10")
    )
if os.environ.get("HYGIENE_AMORTIZED_ACK_WARN_SECONDS"):  # one test's worker warns early
    CELERY_HYGIENE["AMORTIZED_ACK_WARN_SECONDS"] = float(
        os.environ["HYGIENE_AMORTIZED_ACK_WARN_SECONDS"]
    )
if os.environ.get("HYGIENE_ASYNC_COMPLETION"):  # one test's worker records completions async
    CELERY_HYGIENE["ASYNC_COMPLETION"] = True
