"""Database models: the claim ledger and the dead-letter store.

The unique constraint on ``TaskClaim(entity, operation)`` is the single source of truth for
"this already ran"; everything else in the library reads or moves that row.
"""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models.functions import Now


class ClaimStatus(models.TextChoices):
    RUNNING = "running", "Running"
    RETRYING = "retrying", "Retry scheduled"
    SUCCEEDED = "succeeded", "Succeeded"
    DEAD = "dead", "Dead-lettered"


class TaskClaim(models.Model):
    """One row per ``(entity, operation)``: who owns the work, until when, and how it ended."""

    entity = models.CharField(max_length=255)
    operation = models.CharField(max_length=255)
    task_name = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=ClaimStatus.choices)
    # sha256 of the task's bound arguments: tells a true duplicate from a key collision.
    fingerprint = models.CharField(max_length=64)
    owner_task_id = models.CharField(max_length=255)
    owner_worker = models.CharField(max_length=255, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Bumped on every acquisition (first run, retry, takeover): it is both the fencing token for
    # completion and the per-logical-task attempt counter that survives worker crashes.
    attempts = models.PositiveIntegerField(default=1)
    # The return value as the result serializer wrote it (kombu JSON), so duplicates get back
    # exactly the types the first run returned.
    result_json = models.TextField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "task claim"
        constraints = [
            models.UniqueConstraint(
                fields=["entity", "operation"], name="celery_hygiene_claim_entity_operation"
            ),
        ]
        # Only columns that never change after the INSERT are indexed (entity, operation,
        # created_at): completion, renewal and failure updates then touch no index entry and
        # PostgreSQL can make them HOT updates (the new row version on the same page, no index
        # writes). That needs room on the page, hence fillfactor 90 (migration 0005). Retention
        # finds old claims through created_at (a claim completes after it was created); the
        # operator's stale-lease sweep reads the table (rare, by hand). See docs/benchmarks.md.
        indexes = [
            models.Index(fields=["created_at"], name="celery_hyg_claim_created"),
        ]

    def __str__(self) -> str:
        return f"{self.operation}[{self.entity}] {self.status}"


class DeadLetterStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    REPLAYING = "replaying", "Replaying"
    REPLAYED = "replayed", "Replayed"
    DISCARDED = "discarded", "Discarded"


class DeadLetterReason(models.TextChoices):
    EXHAUSTED = "exhausted", "Retries exhausted"
    GAVE_UP = "gave_up", "Non-retryable error"
    TIMEOUT = "timeout", "Time limit exceeded"
    WORKER_LOST = "worker_lost", "Worker lost too often"
    DEADLINE = "deadline", "Retry deadline passed"
    UNDELIVERABLE = "undeliverable", "Never delivered"


class DeadLetter(models.Model):
    """A task that will not run again on its own, with what it takes to understand and replay it."""

    task_name = models.CharField(max_length=255)
    task_id = models.CharField(max_length=255)
    # The message's args/kwargs as sent (never Celery's argsrepr, which truncates and masks).
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    queue = models.CharField(max_length=255, blank=True, default="")
    exchange = models.CharField(max_length=255, blank=True, default="")
    routing_key = models.CharField(max_length=255, blank=True, default="")
    priority = models.PositiveSmallIntegerField(null=True, blank=True)
    # root_id, parent_id, group, and our replay link: what a faithful replay re-sends.
    headers = models.JSONField(default=dict, blank=True)
    entity = models.CharField(max_length=255, blank=True, default="")
    operation = models.CharField(max_length=255, blank=True, default="")
    reason = models.CharField(max_length=16, choices=DeadLetterReason.choices)
    exception_type = models.CharField(max_length=255)
    exception_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField()
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    worker_hostname = models.CharField(max_length=255, blank=True, default="")
    # Set when args/kwargs could not be stored as sent (too big, or not JSON): replay is unsafe.
    payload_truncated = models.BooleanField(default=False)
    payload_note = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(
        max_length=16, choices=DeadLetterStatus.choices, default=DeadLetterStatus.PENDING
    )
    replayed_task_id = models.CharField(max_length=255, blank=True, default="")
    replayed_at = models.DateTimeField(null=True, blank=True)
    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replays"
    )
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        verbose_name = "dead letter"
        ordering = ["-last_failed_at", "-id"]
        indexes = [
            models.Index(fields=["-last_failed_at", "-id"], name="celery_hyg_dl_recent"),
            models.Index(fields=["status", "-last_failed_at"], name="celery_hyg_dl_status_recent"),
            models.Index(fields=["task_name", "-last_failed_at"], name="celery_hyg_dl_task_recent"),
            # The --exception filter and the admin's exception filter, at a million rows.
            models.Index(
                fields=["exception_type", "-last_failed_at"], name="celery_hyg_dl_exc_recent"
            ),
            models.Index(fields=["task_id"], name="celery_hyg_dl_task_id"),
        ]
        permissions = [
            ("replay_deadletter", "Can replay dead letters"),
            ("discard_deadletter", "Can discard dead letters"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.exception_type}"

    @property
    def failed_at(self) -> dt.datetime:  # the CLI/JSON name for last_failed_at
        return self.last_failed_at


class RedeliveryCount(models.Model):
    """How many redelivered copies of one task message (same task id) started its body, for
    tasks without a claim (or whose claim rolls back: atomic).

    Written by a redelivered delivery as its body starts (so the happy path pays nothing, and a
    copy that only sat in a killed worker's prefetch never counts), per retry (``retries``: a
    retry's deliveries start from zero, its earlier runs are in ``request.retries``). It is what
    lets a message that keeps killing its worker be dead-lettered after the cap.
    """

    task_id = models.CharField(max_length=255, unique=True)
    task_name = models.CharField(max_length=255)
    deliveries = models.PositiveIntegerField(default=1)
    retries = models.PositiveIntegerField(db_default=0)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        verbose_name = "redelivery count"


class TaskDurationFlag(models.Model):
    """One task run the duration watchdog saw running past its threshold.

    Written by the worker's main process while the task is still running; ``final_duration``
    is filled in when the run ends (exactly by the process that ran it, or approximately by the
    watchdog if that process died or was killed by a time limit).
    """

    task_name = models.CharField(max_length=255)
    task_id = models.CharField(max_length=255)
    worker_hostname = models.CharField(max_length=255)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    threshold = models.FloatField(help_text="Seconds allowed before the run is flagged.")
    flagged_at = models.DateTimeField()
    over_by = models.FloatField(help_text="Seconds past the threshold when the run was flagged.")
    final_duration = models.FloatField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "slow task run"
        ordering = ["-flagged_at", "-id"]
        indexes = [
            models.Index(fields=["task_name", "-flagged_at"], name="celery_hyg_flag_task_recent"),
            models.Index(fields=["-flagged_at"], name="celery_hyg_flag_recent"),
            models.Index(fields=["task_id"], name="celery_hyg_flag_task_id"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] over {self.threshold:g}s"


class TaskRunStats(models.Model):
    """Run durations of one task name, in one worker process, during one hour.

    Each process owns its rows and rewrites them with its running totals, so concurrent writers
    never contend and a lost flush is corrected by the next one. ``histogram`` maps a log-scale
    bucket index (see ``runstats.bucket_of``) to a run count; p50/p95 are read from it.
    """

    task_name = models.CharField(max_length=255)
    window_start = models.DateTimeField()
    worker = models.CharField(
        max_length=255, help_text="hostname:pid of the process that ran them."
    )
    runs = models.PositiveIntegerField(default=0)
    total_seconds = models.FloatField(default=0.0)
    max_seconds = models.FloatField(default=0.0)
    histogram = models.JSONField(default=dict)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        verbose_name = "task run statistics"
        verbose_name_plural = "task run statistics"
        constraints = [
            models.UniqueConstraint(
                fields=["task_name", "window_start", "worker"], name="celery_hyg_stats_unique"
            ),
        ]
        indexes = [models.Index(fields=["window_start"], name="celery_hyg_stats_window")]


class OutboxMessage(models.Model):
    """A task message that could not be published when it had to be (a retry, a deferred
    duplicate, a claim that waits out a database outage) and whose original was already taken
    off the broker: kept here until a worker's sweep (or ``taskhygiene resend``) publishes it.

    ``signature`` is the Celery signature as kombu JSON, with its countdown turned into an
    absolute ``eta``, so the re-sent message is the one that would have been sent.
    """

    task_name = models.CharField(max_length=255)
    task_id = models.CharField(max_length=255)
    reason = models.CharField(max_length=32)
    signature = models.TextField()
    last_error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    next_try_at = models.DateTimeField(db_default=Now())
    created_at = models.DateTimeField(db_default=Now())
    # Set when a sweep published it: the row then waits for its task to take (delete) it.
    sent_at = models.DateTimeField(null=True, blank=True)
    sends = models.PositiveIntegerField(db_default=0)

    class Meta:
        verbose_name = "unsent message"
        indexes = [models.Index(fields=["next_try_at"], name="celery_hyg_outbox_due")]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] ({self.reason})"


class EnqueueIntent(models.Model):
    """A task message written in the producer's transaction (``delay_on_commit``): it is the
    message itself, kept until its run is settled, so nothing committed can be lost on the way
    to the broker (docs/enqueue.md).

    Every row is unsettled work: a row is deleted when its claim reaches a final state, or
    turned into an ``undeliverable`` dead letter past ``ENQUEUE_MAX_RESENDS``.
    ``(entity, operation)`` is the claim key the run will take (for ``hygienic_task``: the task
    id and ``intent:<task name>``); the partial unique index makes enqueueing the same key
    twice before it runs leave one intent.
    """

    task_id = models.CharField(max_length=255, unique=True)
    task_name = models.CharField(max_length=255)
    # kombu JSON of {"args": [...], "kwargs": {...}, "options": {...}}: the types the task
    # would have received from the broker; a countdown is stored as an absolute "eta".
    message = models.TextField()
    queue = models.CharField(max_length=255, blank=True, default="")
    entity = models.CharField(max_length=255, blank=True, default="")
    operation = models.CharField(max_length=255, blank=True, default="")
    # Keyed by entity: a second enqueue of the same work while this one is unsettled joins it.
    unique_key = models.BooleanField(default=False)
    not_before = models.DateTimeField(null=True, blank=True)
    resends = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    created_at = models.DateTimeField(db_default=Now())
    published_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        verbose_name = "enqueue intent"
        constraints = [
            models.UniqueConstraint(
                fields=["entity", "operation"],
                condition=models.Q(unique_key=True),
                name="celery_hyg_intent_unique_key",
            ),
        ]
        indexes = [models.Index(fields=["next_attempt_at"], name="celery_hyg_intent_due")]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}]"
