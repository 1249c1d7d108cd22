"""Side-effect tables: tests assert "exactly once" from these, not from library bookkeeping."""

from django.db import models


class SideEffect(models.Model):
    entity = models.CharField(max_length=255)
    kind = models.CharField(max_length=64, default="")
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)


class Attempt(models.Model):
    """One row per body execution (committed outside any task transaction)."""

    task = models.CharField(max_length=255)
    key = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
