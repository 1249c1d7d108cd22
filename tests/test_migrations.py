"""The shipped migrations match the models (a forgotten migration breaks every user's deploy)."""

from io import StringIO

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_missing_migrations():
    out = StringIO()
    try:
        call_command("makemigrations", "celery_hygiene", "--check", "--dry-run", stdout=out)
    except SystemExit:  # --check exits 1 when a migration would be written
        pytest.fail(f"celery_hygiene models and migrations differ:\n{out.getvalue()}")
    assert "No changes detected" in out.getvalue()
