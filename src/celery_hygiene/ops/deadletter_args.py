"""``manage.py deadletter``: its shared options (filters, targets) and looking up what they name."""

from __future__ import annotations

import argparse
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


def add_subcommands(parser: CommandParser) -> None:
    """Every subcommand and its options: ``list``, ``show``, ``summary``, ``replay``, ``discard``,
    ``recover``, ``purge``."""
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    summary = sub.add_parser(
        "summary",
        help="Incident summary: counts per task x exception type x reason, newest first.",
    )
    summary.add_argument(
        "--since",
        default="24h",
        help="Failed since: a duration ago (2h, 7d) or a UTC date/time (2026-05-01, "
        "2026-05-01T13:30). Default 24h.",
    )
    summary.add_argument("--json", action="store_true", help="One JSON array, for scripts.")

    listing = sub.add_parser("list", help="Dead letters, newest first.")
    add_filters(listing)
    listing.add_argument("--status", choices=STATUSES, help="Only this status.")
    listing.add_argument("--limit", type=int, default=50, help="Rows to print (default 50).")
    listing.add_argument("--json", action="store_true", help="One JSON array, for scripts.")

    show = sub.add_parser("show", help="Everything about one dead letter.")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")

    rep = sub.add_parser("replay", help="Send dead letters back to their queue.")
    add_targets(rep)
    rep.add_argument("--queue", help="Publish to this queue instead of the original one.")
    rep.add_argument(
        "--rate",
        type=float,
        default=None,
        help="Messages per second for bulk replays (default CELERY_HYGIENE['REPLAY_RATE']).",
    )
    rep.add_argument(
        "--force",
        action="store_true",
        help="Replay even if the payload was stored truncated, or to an undeclared --queue.",
    )
    add_by(rep)

    discard = sub.add_parser("discard", help="Mark as handled without replaying.")
    add_targets(discard)
    add_by(discard)

    rec = sub.add_parser(
        "recover", help="Settle dead letters stuck in 'replaying' (publisher died)."
    )
    rec.add_argument("ids", nargs="+", type=int, metavar="ID")
    rec.add_argument(
        "--force",
        action="store_true",
        help="Set back to pending even when no claim can tell whether the replay was sent.",
    )
    add_by(rec)

    purge = sub.add_parser("purge", help="Delete old handled dead letters, in small batches.")
    purge.add_argument("--older-than", required=True, help="Age, e.g. 30d, 12h, 2w.")
    purge.add_argument(
        "--include-pending",
        action="store_true",
        help="Also delete pending (never handled) ones. Default: replayed and discarded only.",
    )
    purge.add_argument("--batch-size", type=int, default=1000)
    purge.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    for subparser in sub.choices.values():
        # Operators type `deadletter purge ... -v 2`; argparse only knows -v before the
        # subcommand. SUPPRESS keeps the top-level value when it is not given here.
        subparser.add_argument(
            "-v", "--verbosity", type=int, choices=[0, 1, 2, 3], default=argparse.SUPPRESS
        )


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
