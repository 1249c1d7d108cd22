# As Celery's Django guide has it: the app is loaded whenever Django starts.
from .celery import app as celery_app

__all__ = ["celery_app"]
