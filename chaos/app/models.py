"""The side-effect table the report counts from (never the library's own bookkeeping)."""

from django.db import models


class SideEffect(models.Model):
    """One row per run of a task body that got as far as its effect.

    No unique constraint on purpose: a body that runs twice for one key leaves two rows.
    ``created_at`` is when the effect was written (the worker's clock, same machine as the
    harness), ``returns_at`` when the body returns (it is planned before the effect is written:
    the body sleeps exactly until then and writes nothing more, so a database outage during the
    sleep cannot turn a completed effect into a failed body).
    """

    key = models.CharField(max_length=64, db_index=True)
    mode = models.CharField(max_length=8)  # "plain", "atomic" or "control"
    task_id = models.CharField(max_length=64)
    worker_pid = models.IntegerField()  # the prefork child
    worker_pgid = models.IntegerField()  # the worker's main process (the harness kills groups)
    worker = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField()
    returns_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["mode", "key"], name="chaos_effect_mode_key")]
