"""Settings, one dict, ``CELERY_HYGIENE``; read once, re-read after ``override_settings``.

Every key is optional::

    CELERY_HYGIENE = {
        "DEFAULT_RETRY_POLICY": RetryPolicy(max_attempts=5),   # or a dict of RetryPolicy kwargs
        "DEFAULT_LEASE_SECONDS": 60,       # claim lease, renewed by the worker while the body
                                           # runs (heartbeat); a dead owner's claim lapses after it
        "DEFER_MAX_SECONDS": 60,           # longest a duplicate waits before looking again
        "DB_RETRY_SECONDS": 60,            # how long bookkeeping writes (completion, dead letter,
                                           # main-process writes) retry through a database outage
        "DB_RETRY_MAX_WAIT": 5.0,          # longest pause between those tries, seconds
        "CLAIM_RETRY_SECONDS": 600,        # how long a message whose claim cannot be taken
                                           # (database unreachable) keeps coming back; not counted
                                           # against the task's retry policy
        "CLAIM_RETRY_MAX_DELAY": 30,       # longest pause between those claim tries, seconds
        "DEADLETTER_FALLBACK": "requeue",  # the database cannot take a dead letter: "requeue" the
                                           # message (kept by any broker) or "reject" it (to a
                                           # RabbitMQ dead-letter exchange)
        "OUTBOX_SWEEP_SECONDS": 5,         # how often workers re-send messages whose publish failed
        "REDIS_RESTORE_SECONDS": 10,       # Redis broker: how often workers restore messages of
                                           # killed workers once their visibility timeout passed
        "PAYLOAD_MAX_BYTES": 262144,       # larger args/kwargs are stored truncated and flagged
        "CELERY_APP": None,                # dotted path of the Celery app used to replay dead
                                           # letters ("proj.celery.app"); None = celery.current_app
        "REDACT_KEYS": None,               # payload keys masked in CLI/admin output (nested,
                                           # ignoring case, "-" and "_"); None means
                                           # redaction.DEFAULT_PATTERNS; stored data is unchanged
        "REPLAY_RATE": 10.0,               # default bulk replay rate, messages per second
        "AUDIT_CLI_USERNAME": "deadletter-cli",  # inactive user owning the History entries of
                                           # `manage.py deadletter` run by an OS user with no
                                           # Django user of the same name
        "WATCHDOG_ENABLED": True,          # watch run durations in every worker (docs/watchdog.md)
        "DURATION_THRESHOLD_SECONDS": 60,  # flag longer runs; per task: expected_duration=
        "WATCHDOG_INTERVAL_SECONDS": 1.0,  # how often the worker's main process looks
        "RUN_STATS_FLUSH_SECONDS": 60,     # how often a process writes its run statistics
                                           # (on a timer too, so an idle worker's runs show)
        "AUDIT_WARNINGS_EVERYWHERE": False, # audit warnings in every command's system checks,
                                           # not only in `check --deploy` / `taskhygiene check`
        "PREPARED_STATEMENTS": False,      # PostgreSQL: prepare the claim statements once per
                                           # connection (server-side binding); not behind
                                           # PgBouncer < 1.21 in transaction mode
        "ASYNC_COMPLETION": False,         # PostgreSQL: the completion's commit does not wait
                                           # for the WAL flush; a server crash right after it
                                           # can lose the record (docs/benchmarks.md)
        "AMORTIZED_COMPLETION": False,     # prefork workers: pool processes hand completions to
                                           # the main process, which records them in batches
                                           # (one statement each) before acks_late messages are
                                           # acknowledged (docs/idempotency.md)
        "AMORTIZED_COMPLETION_GATHER_MS": 10,  # how long the main process lets a batch fill
                                           # after its first record (0: write at once)
        "AMORTIZED_ACK_WARN_SECONDS": 60,  # log `amortized_acks_stuck` when an acknowledgement
                                           # has been held longer than this
        "UPKEEP_BROKER_TIMEOUT_SECONDS": 10,  # socket timeouts of the worker's own broker I/O
                                           # (outbox re-send, Redis restore scan)
        "ENQUEUE_RESEND_SECONDS": 60,      # delay_on_commit: an intent whose message no run
                                           # has claimed this long (or whose run's lease lapsed)
                                           # is published again (docs/enqueue.md)
        "ENQUEUE_RESEND_MAX_DELAY": 3600,  # longest back-off between two re-sends of one intent
        "ENQUEUE_MAX_RESENDS": 12,         # then it becomes an `undeliverable` dead letter
        "ENQUEUE_SWEEP_SECONDS": 5,        # how often each worker (or `taskhygiene relay`) looks
        "ENQUEUE_DATABASES": None,         # aliases holding intents (using=); None: the write
                                           # alias of the claim table
    }

``DEFAULT_LEASE_SECONDS`` and ``lease_seconds=`` must be at least ``MIN_LEASE_SECONDS``: the
worker looks at its leases every ``LEASE_TICK_SECONDS`` and renews one when a third of it has
passed, so a shorter lease could lapse between two looks of a live owner.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

LEASE_TICK_SECONDS = 1.0
MIN_LEASE_SECONDS = 3 * LEASE_TICK_SECONDS

DEFAULTS: dict[str, Any] = {
    "DEFAULT_RETRY_POLICY": None,
    "DEFAULT_LEASE_SECONDS": 60.0,
    "DEFER_MAX_SECONDS": 60.0,
    "DB_RETRY_SECONDS": 60.0,
    "DB_RETRY_MAX_WAIT": 5.0,
    "CLAIM_RETRY_SECONDS": 600.0,
    "CLAIM_RETRY_MAX_DELAY": 30.0,
    "DEADLETTER_FALLBACK": "requeue",
    "OUTBOX_SWEEP_SECONDS": 5.0,
    "REDIS_RESTORE_SECONDS": 10.0,
    "PAYLOAD_MAX_BYTES": 256 * 1024,
    "CELERY_APP": None,
    "REDACT_KEYS": None,
    "REPLAY_RATE": 10.0,
    "AUDIT_CLI_USERNAME": "deadletter-cli",
    "WATCHDOG_ENABLED": True,
    "DURATION_THRESHOLD_SECONDS": 60.0,
    "WATCHDOG_INTERVAL_SECONDS": 1.0,
    "RUN_STATS_FLUSH_SECONDS": 60.0,
    "AUDIT_WARNINGS_EVERYWHERE": False,
    "PREPARED_STATEMENTS": False,
    "ASYNC_COMPLETION": False,
    "AMORTIZED_COMPLETION": False,
    "AMORTIZED_COMPLETION_GATHER_MS": 10.0,
    "AMORTIZED_ACK_WARN_SECONDS": 60.0,
    "UPKEEP_BROKER_TIMEOUT_SECONDS": 10.0,
    "ENQUEUE_RESEND_SECONDS": 60.0,
    "ENQUEUE_RESEND_MAX_DELAY": 3600.0,
    "ENQUEUE_MAX_RESENDS": 12,
    "ENQUEUE_SWEEP_SECONDS": 5.0,
    "ENQUEUE_DATABASES": None,
}


# Settings of earlier versions, still read (and still valid keys) under their new names. The
# attempt count became a time budget: a count of quick tries cannot ride out a restart.
RENAMED: dict[str, str] = {
    "DEADLETTER_WRITE_MAX_WAIT": "DB_RETRY_MAX_WAIT",
    "DEADLETTER_WRITE_ATTEMPTS": "",  # replaced by DB_RETRY_SECONDS; ignored
    "LEASE_MARGIN_SECONDS": "",  # leases are heartbeats now, independent of time limits
}


# Read once per process, then served from here: some settings are read for every claim
# statement. override_settings (and pytest-django's ``settings``) announce changes through
# ``setting_changed``, which empties it; so does reload().
_cache: dict[str, Any] = {}


def get(name: str) -> Any:
    """One setting, with its default; unknown names are a programming error."""
    try:
        return _cache[name]
    except KeyError:
        pass
    value = _read(name)
    _cache[name] = value
    return value


def reload() -> None:
    """Forget what was read (after changing ``settings.CELERY_HYGIENE`` in place)."""
    _cache.clear()


def _read(name: str) -> Any:
    if name not in DEFAULTS:
        raise KeyError(f"celery_hygiene has no setting {name!r}")
    configured = getattr(settings, "CELERY_HYGIENE", {}) or {}
    if not isinstance(configured, dict):
        raise ImproperlyConfigured("CELERY_HYGIENE must be a dict of setting names to values.")
    value = DEFAULTS[name]
    if name in configured:
        value = configured[name]
    else:
        for old, new in RENAMED.items():
            if new == name and old in configured:
                value = configured[old]
    if name == "DEFAULT_LEASE_SECONDS":
        check_lease(value, "CELERY_HYGIENE['DEFAULT_LEASE_SECONDS']")
    return value


def check_lease(seconds: Any, where: str) -> None:
    """Refuse a lease the worker cannot renew in time (see MIN_LEASE_SECONDS)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ImproperlyConfigured(f"{where} must be a number of seconds, got {seconds!r}.")
    if not seconds >= MIN_LEASE_SECONDS:
        raise ImproperlyConfigured(
            f"{where} is {seconds!r} s: a lease must be at least {MIN_LEASE_SECONDS:g} s. The "
            f"worker renews leases on a {LEASE_TICK_SECONDS:g} s tick when a third has passed, "
            "so a shorter one lapses while its owner is alive. Use a longer lease; it only "
            "bounds how long a crashed owner's claim stays blocked."
        )


def _on_setting_changed(setting: str = "", **kwargs: Any) -> None:
    if setting == "CELERY_HYGIENE":
        reload()


setting_changed.connect(_on_setting_changed, dispatch_uid="celery_hygiene_conf")


def unknown_keys() -> list[str]:
    """Keys in CELERY_HYGIENE that no version of the library reads (typos), for the system check."""
    configured = getattr(settings, "CELERY_HYGIENE", {}) or {}
    return sorted(set(configured) - set(DEFAULTS) - set(RENAMED))
