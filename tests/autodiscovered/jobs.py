"""Imported by nothing but Celery's autodiscovery (and the audit, which must find it)."""

from celery import shared_task


@shared_task(name="autodisc.nightly_export")
def nightly_export() -> None: ...
