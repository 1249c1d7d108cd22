"""Tasks as an existing codebase has them: mostly @app.task, a few moved to our decorators."""

from config.celery import app, hygienic_task, idempotent_task

from shop.models import Attempt, Charge, Cleanup, Visit


@app.task
def record_visit(page):
    """A plain @app.task: hygienic anyway, through the app's task_cls."""
    Visit.objects.create(page=page)
    return page


@app.task
def import_feed(key):
    """A plain @app.task that always fails: it never retried, and still does not (task_cls
    changes nothing else); its failure ends as a dead letter instead of vanishing."""
    Attempt.objects.create(task="import_feed", key=key)
    raise ValueError(f"feed {key} is malformed")


@app.task(autoretry_for=(IOError,), max_retries=1, default_retry_delay=0.1)
def notify_partner(key, error):
    """Celery's own retry options on a plain @app.task: retried on IOError only, as before."""
    Attempt.objects.create(task="notify_partner", key=key)
    raise {"io": OSError, "value": ValueError}[error](f"partner {key}: {error}")


@hygienic_task(
    autoretry_for=(ConnectionError,),
    retry_backoff=True,
    retry_backoff_max=1,
    retry_jitter=False,
    max_retries=2,
)
def sync_stock(sku):
    """Moved from @app.task with its Celery retry options unchanged."""
    Attempt.objects.create(task="sync_stock", key=sku)
    raise ConnectionError(f"warehouse unreachable for {sku}")


@idempotent_task(entity="order_id", operation="charge", acks_late=True, reject_on_worker_lost=True)
def charge_order(order_id, amount_cents):
    Charge.objects.create(order_id=order_id, amount_cents=amount_cents)
    return order_id


@app.task
def nightly_cleanup():
    """Run by beat (CELERY_BEAT_SCHEDULE)."""
    Cleanup.objects.create()
