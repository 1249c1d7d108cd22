"""A minimal Django project + Celery app that the benchmark driver (benchmarks/run.py) starts."""
