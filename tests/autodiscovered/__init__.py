"""A package found only through ``autodiscover_tasks(packages=[...], related_name="jobs")``."""
