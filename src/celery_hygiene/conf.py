"""Settings, read at call time so ``override_settings`` works; one dict, ``CELERY_HYGIENE``.

Every key is optional::

    CELERY_HYGIENE = {
        "DEFAULT_RETRY_POLICY": RetryPolicy(max_attempts=5),   # or a dict of RetryPolicy kwargs
        "DEFAULT_LEASE_SECONDS": 300,      # claim lease when the task has no time limit
        "LEASE_MARGIN_SECONDS": 30,        # added to a task's hard time limit to get its lease
        "DEFER_MAX_SECONDS": 60,           # longest a duplicate waits before looking again
        "DEADLETTER_WRITE_ATTEMPTS": 5,    # tries to store a dead letter before rejecting
        "DEADLETTER_WRITE_MAX_WAIT": 5.0,  # longest pause between those tries, seconds
        "PAYLOAD_MAX_BYTES": 262144,       # larger args/kwargs are stored truncated and flagged
        "CELERY_APP": None,                # dotted path of the Celery app used to replay dead
                                           # letters ("proj.celery.app"); None = celery.current_app
        "REDACT_KEYS": ["password", "secret", "token", "api_key", "authorization"],
                                           # payload keys masked in CLI/admin output (nested,
                                           # case-insensitive substring); stored data is unchanged
        "REPLAY_RATE": 10.0,               # default bulk replay rate, messages per second
        "WATCHDOG_ENABLED": True,          # watch run durations in every worker (docs/watchdog.md)
        "DURATION_THRESHOLD_SECONDS": 60,  # flag longer runs; per task: expected_duration=
        "WATCHDOG_INTERVAL_SECONDS": 1.0,  # how often the worker's main process looks
        "RUN_STATS_FLUSH_SECONDS": 60,     # how often a process writes its run statistics
                                           # (on a timer too, so an idle worker's runs show)
        "AUDIT_WARNINGS_EVERYWHERE": False, # audit warnings in every command's system checks,
                                           # not only in `check --deploy` / `taskhygiene check`
    }
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = {
    "DEFAULT_RETRY_POLICY": None,
    "DEFAULT_LEASE_SECONDS": 300.0,
    "LEASE_MARGIN_SECONDS": 30.0,
    "DEFER_MAX_SECONDS": 60.0,
    "DEADLETTER_WRITE_ATTEMPTS": 5,
    "DEADLETTER_WRITE_MAX_WAIT": 5.0,
    "PAYLOAD_MAX_BYTES": 256 * 1024,
    "CELERY_APP": None,
    "REDACT_KEYS": ["password", "secret", "token", "api_key", "authorization"],
    "REPLAY_RATE": 10.0,
    "WATCHDOG_ENABLED": True,
    "DURATION_THRESHOLD_SECONDS": 60.0,
    "WATCHDOG_INTERVAL_SECONDS": 1.0,
    "RUN_STATS_FLUSH_SECONDS": 60.0,
    "AUDIT_WARNINGS_EVERYWHERE": False,
}


def get(name: str) -> Any:
    """One setting, with its default; unknown names are a programming error."""
    if name not in DEFAULTS:
        raise KeyError(f"celery_hygiene has no setting {name!r}")
    configured = getattr(settings, "CELERY_HYGIENE", {}) or {}
    if not isinstance(configured, dict):
        raise ImproperlyConfigured("CELERY_HYGIENE must be a dict of setting names to values.")
    return configured.get(name, DEFAULTS[name])


def unknown_keys() -> list[str]:
    """Keys in CELERY_HYGIENE that no version of the library reads (typos), for the system check."""
    configured = getattr(settings, "CELERY_HYGIENE", {}) or {}
    return sorted(set(configured) - set(DEFAULTS))
