"""celery-hygiene: task hygiene for Django + Celery."""
