"""A small Django project with a Celery worker that shows every celery-hygiene feature.

``celery -A example_worker worker -Q fast -c 8`` finds the app below.
"""

from .celery import app

__all__ = ("app",)
