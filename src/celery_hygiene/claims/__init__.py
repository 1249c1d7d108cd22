"""The Celery-free claim core: claim state and SQL, keys, specs, redeliveries, DB retries."""
