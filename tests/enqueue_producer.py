"""A producer process for tests/test_enqueue.py: enqueue with delay_on_commit, then maybe die.

    python -m tests.enqueue_producer MODE QUEUE KEY [KEY ...]

MODE ``die``: an earlier on-commit callback calls ``os._exit`` right after the COMMIT, before
the publish. MODE ``send``: an ordinary COMMIT (pointed at a dead broker by the test's env, the
publish fails). Prints each returned task id on a line of its own.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.db import transaction  # noqa: E402

from tests.celery_app import app  # noqa: E402,F401 - django.setup() and the tasks
from tests.testapp import tasks_enqueue  # noqa: E402
from tests.testapp.models import SideEffect  # noqa: E402


def main(mode: str, queue: str, keys: list[str]) -> None:
    ids = []
    with transaction.atomic():
        if mode == "die":
            transaction.on_commit(lambda: os._exit(0))
        for key in keys:
            SideEffect.objects.create(entity=key, kind="order")
            ids.append(tasks_enqueue.charge.apply_async_on_commit((key,), queue=queue))
        print("\n".join(ids), flush=True)
    print("committed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
