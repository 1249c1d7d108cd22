"""The benchmark's side-effect table (created with ``migrate --run-syncdb``: no migrations)."""

from django.db import models


class Effect(models.Model):
    """One row per body execution: what "exactly once" is checked against after every run."""

    key = models.CharField(max_length=255)
