"""Settings of the example project. Services come from the environment, with local defaults."""

import os

SECRET_KEY = "example-only-not-secret"  # noqa: S105
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "example_worker.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "celery_hygiene",
    "example_worker.shop",
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
        "NAME": os.environ.get("EXAMPLE_DB_NAME", "celery_hygiene_example"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "CONN_MAX_AGE": 0,  # workers must not hold connections between tasks
    }
}

CELERY_BROKER_URL = os.environ.get("EXAMPLE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CELERY_RESULT_BACKEND = os.environ.get("EXAMPLE_RESULT_BACKEND", "redis://127.0.0.1:6379/14")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

# Separate rooms: one bad category of work cannot starve the others.
CELERY_HYGIENE_QUEUES = {
    "fast": {"tasks": ["shop.send_receipt", "shop.*"], "default": True},
    "slow": {"tasks": ["shop.build_report"], "slow": True, "prefetch_multiplier": 1},
    "bounded": {
        "tasks": ["shop.charge_order", "shop.call_partner"],
        "soft_time_limit": 5,
        "time_limit": 8,
    },
}

CELERY_HYGIENE = {
    "DEFAULT_RETRY_POLICY": {"max_attempts": 5, "min_delay": 1, "max_delay": 60},
    "DURATION_THRESHOLD_SECONDS": 60,
    "RUN_STATS_FLUSH_SECONDS": 1,  # so the demo's report sees runs right away
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"celery_hygiene": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
