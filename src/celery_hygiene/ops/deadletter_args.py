"""``manage.py deadletter``: its shared options (filters, targets) and looking up what they name."""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
from collections.abc import Iterable, Iterator
from typing import Any

from django.core.management.base import CommandError, CommandParser

from celery_hygiene.failures.durations import DurationError
from celery_hygiene.failures.replay import celery_app, load_task_modules
from celery_hygiene.failures.selection import is_glob, since_utc, task_matches
from celery_hygiene.models import DeadLetter, DeadLetterReason, DeadLetterStatus

STATUSES = [choice.value for choice in DeadLetterStatus]
REASONS = [choice.value for choice in DeadLetterReason]


def add_filters(parser: CommandParser) -> None:
    parser.add_argument("--task", help="Task name, or a glob such as 'shop.*'.")
    parser.add_argument(
        "--exception", help="Exception type, e.g. TimeoutError or requests.HTTPError."
    )
    parser.add_argument(
        "--since",
        help="Failed since: a duration ago (2h, 7d) or a UTC date/time (2026-05-01, "
        "2026-05-01T13:30; an explicit offset such as +02:00 is honoured).",
    )
    parser.add_argument("--entity", help="Exact entity, e.g. order-77.")
    parser.add_argument("--reason", choices=REASONS, help="Why it was dead-lettered.")


def add_by(parser: CommandParser) -> None:
    parser.add_argument(
        "--by",
        help="Who is acting, for the admin History (a Django username; default: the OS user).",
    )


def add_targets(parser: CommandParser) -> None:
    parser.add_argument("ids", nargs="*", type=int, metavar="ID")
    add_filters(parser)
    parser.add_argument("--all", action="store_true", help="Every pending dead letter.")
    parser.add_argument(
        "--dry-run", action="store_true", help="Show what would happen; change nothing."
    )


def parse_since(text: str) -> Any:
    try:
        return since_utc(text)
    except DurationError as exc:
        raise CommandError(f"--since: {exc}") from None


def check_task(name: str) -> None:
    """A task name that neither failed nor exists is a typo: say so instead of matching nothing."""
    if DeadLetter.objects.filter(task_matches(name)).exists():
        return
    app = celery_app()
    with contextlib.suppress(Exception):  # the suggestion below is best effort
        load_task_modules(app)
    registered = [t for t in app.tasks if not t.startswith("celery.")]
    if is_glob(name):
        if any(fnmatch.fnmatchcase(t, name) for t in registered):
            return
        raise CommandError(f"no dead letters and no registered task match {name!r}")
    if name in registered:
        return
    known = set(registered) | set(
        DeadLetter.objects.order_by().values_list("task_name", flat=True).distinct()[:1000]
    )
    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise CommandError(
        f"unknown task {name!r}: no dead letters and not registered in Celery.{hint}"
    )


def get_one(pk: int) -> DeadLetter:
    try:
        return DeadLetter.objects.get(pk=pk)
    except DeadLetter.DoesNotExist:
        raise CommandError(f"no dead letter with id {pk}") from None


def get_many(ids: Iterable[int]) -> list[DeadLetter]:
    wanted = list(dict.fromkeys(ids))
    found = DeadLetter.objects.in_bulk(wanted)
    missing = [pk for pk in wanted if pk not in found]
    if missing:
        raise CommandError(
            f"no dead letter with id {', '.join(map(str, missing))}; nothing changed"
        )
    return [found[pk] for pk in wanted]


def chunks(items: Iterable[int], size: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
