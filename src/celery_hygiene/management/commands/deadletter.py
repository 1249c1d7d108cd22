"""``manage.py deadletter summary|list|show|replay|discard|recover|purge``: dead letters for
on-call.

Bad input (unknown id, unknown task, malformed duration, undeclared queue) raises
``CommandError`` before anything is changed. Payloads are printed redacted
(``CELERY_HYGIENE["REDACT_KEYS"]``); replays send the stored, real values. Every time is printed
in UTC and every date typed is read in UTC. Replay, discard and recover leave an admin History
entry naming who ran them (``--by``, default the OS user).

Django's system checks are not run first (they print the whole hygiene audit before every
command); replay loads the Celery app's task modules itself.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import difflib
import fnmatch
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet
from django.utils import timezone

from celery_hygiene import conf
from celery_hygiene.failures import history
from celery_hygiene.failures.deadletters import describe_failure, format_utc, short_type
from celery_hygiene.failures.durations import DurationError, duration_option
from celery_hygiene.failures.redaction import redact
from celery_hygiene.failures.replay import (
    Outcome,
    ReplayResult,
    celery_app,
    discard,
    load_task_modules,
    paced,
    pending_ids,
    queue_refusal,
    refusal,
    replay,
    replay_outcome,
)
from celery_hygiene.failures.retention import purge_dead_letters
from celery_hygiene.failures.selection import Selection, is_glob, since_utc, task_matches
from celery_hygiene.models import DeadLetter, DeadLetterReason, DeadLetterStatus
from celery_hygiene.ops.report import IncidentGroup, incident_summary

STATUSES = [choice.value for choice in DeadLetterStatus]
REASONS = [choice.value for choice in DeadLetterReason]
# Retention never deletes a row whose replay is in flight.
PURGEABLE = (DeadLetterStatus.REPLAYED, DeadLetterStatus.DISCARDED)


class Command(BaseCommand):
    help = "Inspect, replay, discard and purge dead-lettered Celery tasks. Times are UTC."
    # The system checks print the whole hygiene audit before every command; an operator at 3 a.m.
    # wants the dead letters. `manage.py check` / `taskhygiene check` run them.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
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
        _add_filters(listing)
        listing.add_argument("--status", choices=STATUSES, help="Only this status.")
        listing.add_argument("--limit", type=int, default=50, help="Rows to print (default 50).")
        listing.add_argument("--json", action="store_true", help="One JSON array, for scripts.")

        show = sub.add_parser("show", help="Everything about one dead letter.")
        show.add_argument("id", type=int)
        show.add_argument("--json", action="store_true")

        rep = sub.add_parser("replay", help="Send dead letters back to their queue.")
        _add_targets(rep)
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
        _add_by(rep)

        discard = sub.add_parser("discard", help="Mark as handled without replaying.")
        _add_targets(discard)
        _add_by(discard)

        rec = sub.add_parser(
            "recover", help="Settle dead letters stuck in 'replaying' (publisher died)."
        )
        rec.add_argument("ids", nargs="+", type=int, metavar="ID")
        rec.add_argument(
            "--force",
            action="store_true",
            help="Set back to pending even when no claim can tell whether the replay was sent.",
        )
        _add_by(rec)

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

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = int(options.get("verbosity", 1))
        handler = getattr(self, f"handle_{options['subcommand']}")
        handler(options)

    # -- list / show -------------------------------------------------------------------------

    def handle_list(self, options: dict[str, Any]) -> None:
        selection = self._selection(
            options, statuses=(options["status"],) if options["status"] else ()
        )
        if options["limit"] < 0:
            raise CommandError("--limit must be 0 (no limit) or more")
        queryset: QuerySet[DeadLetter] = selection.queryset()
        limit = options["limit"]
        rows = list(queryset[: limit + 1] if limit else queryset)
        more = bool(limit) and len(rows) > limit
        rows = rows[:limit] if limit else rows
        if options["json"]:
            self.stdout.write(json.dumps([as_dict(row) for row in rows], indent=2))
        else:
            self.stdout.write(format_table(rows))
        if more:
            # On stderr, so `--json | jq` still reads one array.
            total = _capped_count(queryset)
            self.stderr.write(
                f"showing the newest {limit} of {total} matching dead letters; "
                "--limit 0 shows all, or narrow with --since/--task/--exception/--status"
            )

    def handle_show(self, options: dict[str, Any]) -> None:
        dead_letter = _get(options["id"])
        data = as_dict(dead_letter, full=True)
        if dead_letter.replayed_task_id:
            outcome = replay_outcome(dead_letter)
            data["replay_outcome"] = outcome.state.value
            data["replay_outcome_text"] = outcome.text
            data["replayed_again_as"] = outcome.dead_letter.pk if outcome.dead_letter else None
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
            return
        self.stdout.write(format_detail(dead_letter, data))

    def handle_summary(self, options: dict[str, Any]) -> None:
        since = _since(options["since"])
        groups = incident_summary(since=since)
        if options["json"]:
            self.stdout.write(json.dumps([group.as_json() for group in groups], indent=2))
            return
        self.stdout.write(format_summary(groups, since))

    # -- replay ------------------------------------------------------------------------------

    def handle_replay(self, options: dict[str, Any]) -> None:
        rate = options["rate"] if options["rate"] is not None else float(conf.get("REPLAY_RATE"))
        if rate <= 0:
            raise CommandError(f"--rate must be greater than 0 (got {rate:g})")
        app = celery_app()
        load_task_modules(app)
        unknown_queue = "" if options["force"] else queue_refusal(app, options["queue"])
        if unknown_queue:
            raise CommandError(f"nothing replayed: {unknown_queue}")
        ids, total = self._targets(options)
        if options["ids"]:
            # Named ids are all-or-nothing: any refusal stops the command before a single publish.
            refusals = [
                r
                for r in (
                    refusal(dl, app, force=options["force"], queue=options["queue"])
                    for dl in _get_many(ids)
                )
                if r
            ]
            if refusals:
                raise CommandError(
                    "nothing replayed:\n  " + "\n  ".join(r.message for r in refusals)
                )
        if options["dry_run"]:
            self._dry_run_replay(ids, total, app, options)
            return
        actor = history.cli_actor(options["by"])
        failed = 0
        for index, pk in enumerate(paced(ids, rate), start=1):
            result = replay(pk, queue=options["queue"], force=options["force"], app=app)
            failed += not result.ok
            if result.ok:
                history.record(actor, "replay", {pk: replay_note(result, options["queue"])})
            self._progress(index, total, result)
        self._finish("replayed", total, failed)

    def _dry_run_replay(
        self, ids: Iterable[int], total: int, app: Any, options: dict[str, Any]
    ) -> None:
        would = 0
        for dead_letter in _get_many(ids):
            refused = refusal(dead_letter, app, force=options["force"], queue=options["queue"])
            if refused:
                self.stdout.write(f"would skip {dead_letter.pk}: {refused.message}")
                continue
            would += 1
            target = options["queue"] or dead_letter.queue or "(default queue)"
            self.stdout.write(f"would replay {dead_letter.pk} {dead_letter.task_name} -> {target}")
        self.stdout.write(f"dry run: {would} of {total} would be replayed; nothing was changed")

    def _progress(self, index: int, total: int, result: ReplayResult) -> None:
        if result.ok and self.verbosity < 1:
            return
        if result.ok:
            line = f"[{index}/{total}] replayed {result.dead_letter_id} as task {result.task_id}"
            if result.outcome is Outcome.SCHEDULED:
                line += " (sent when the surrounding transaction commits)"
            if result.message:
                line += f"; note: {result.message}"
            self.stdout.write(line)
        else:
            self.stderr.write(
                f"[{index}/{total}] not replayed {result.dead_letter_id}: {result.message}"
            )

    def _finish(self, verb: str, total: int, failed: int) -> None:
        if failed:
            raise CommandError(f"{failed} of {total} dead letters were not {verb} (see above)")
        if self.verbosity >= 1:
            self.stdout.write(f"{verb} {total} dead letter{'s' if total != 1 else ''}")

    # -- discard -----------------------------------------------------------------------------

    def handle_discard(self, options: dict[str, Any]) -> None:
        ids, total = self._targets(options)
        if options["ids"]:
            not_pending = [dl for dl in _get_many(ids) if dl.status != DeadLetterStatus.PENDING]
            if not_pending:
                raise CommandError(
                    "nothing discarded; only pending dead letters can be discarded: "
                    + ", ".join(f"{dl.pk} is {dl.status}" for dl in not_pending)
                )
        if options["dry_run"]:
            self.stdout.write(f"dry run: {total} would be discarded; nothing was changed")
            return
        actor = history.cli_actor(options["by"])
        done = 0
        for chunk in _chunks(ids, 500):
            # Status guard: a row replayed meanwhile by someone else stays replayed.
            changed = discard(chunk)
            history.record(actor, "discard", dict.fromkeys(changed, "marked handled, not replayed"))
            done += len(changed)
            if self.verbosity >= 1 and total > 500:
                self.stdout.write(f"[{done}/{total}] discarded")
        self._finish("discarded", total, total - done)

    # -- recover / purge ---------------------------------------------------------------------

    def handle_recover(self, options: dict[str, Any]) -> None:
        from celery_hygiene.failures.replay import RecoverError, recover

        actor = history.cli_actor(options["by"])
        failures = 0
        for pk in dict.fromkeys(options["ids"]):
            try:
                done = recover(pk, force=options["force"])
                history.record(actor, "recover", {pk: done})
                self.stdout.write(done)
            except RecoverError as exc:
                failures += 1
                self.stderr.write(str(exc))
        if failures:
            raise CommandError(f"{failures} dead letter(s) not recovered")

    def handle_purge(self, options: dict[str, Any]) -> None:
        age = duration_option(options["older_than"], "--older-than")
        if options["batch_size"] <= 0:
            raise CommandError("--batch-size must be greater than 0")
        statuses = (
            [*PURGEABLE, DeadLetterStatus.PENDING] if options["include_pending"] else PURGEABLE
        )
        cutoff = timezone.now() - age
        # order_by() drops the default ordering: batches need no sort, just bounded size.
        old = DeadLetter.objects.filter(status__in=statuses, last_failed_at__lt=cutoff).order_by()
        if options["dry_run"]:
            self.stdout.write(
                f"dry run: {old.count()} dead letters that last failed before "
                f"{format_utc(cutoff)} would be purged"
            )
            return

        def progress(done: int) -> None:
            if self.verbosity >= 2:
                self.stdout.write(f"purged {done} so far")

        # One short transaction per batch: locks are held for one batch, never the whole purge.
        purged = purge_dead_letters(
            older_than=age, statuses=statuses, batch_size=options["batch_size"], on_batch=progress
        )
        self.stdout.write(
            f"purged {purged} dead letters that last failed before {format_utc(cutoff)}"
        )

    # -- shared ------------------------------------------------------------------------------

    def _selection(self, options: dict[str, Any], statuses: tuple[str, ...] = ()) -> Selection:
        task = options.get("task")
        if task:
            _check_task(task)
        since = options.get("since")
        return Selection(
            task=task,
            statuses=statuses,
            exception=options.get("exception"),
            since=_since(since) if since else None,
            entity=options.get("entity"),
            reason=options.get("reason"),
        )

    def _targets(self, options: dict[str, Any]) -> tuple[Iterable[int], int]:
        """Ids named on the command line (all must exist), or every pending row of a filter."""
        ids: list[int] = options["ids"]
        has_filter = any(
            options.get(name) for name in ("task", "since", "exception", "entity", "reason")
        )
        if ids and (has_filter or options["all"]):
            raise CommandError(
                "give either dead-letter ids or a filter "
                "(--task/--since/--exception/--entity/--reason/--all), not both"
            )
        if ids:
            _get_many(ids)  # unknown ids fail here, before anything changes
            return list(dict.fromkeys(ids)), len(set(ids))
        if not has_filter and not options["all"]:
            raise CommandError(
                "say which dead letters: ids, a filter (--task, --since, --exception, --entity, "
                "--reason), or --all"
            )
        selection = self._selection(options)
        total = selection.queryset().filter(status=DeadLetterStatus.PENDING).count()
        return pending_ids(selection), total


def _add_filters(parser: CommandParser) -> None:
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


def _add_by(parser: CommandParser) -> None:
    parser.add_argument(
        "--by",
        help="Who is acting, for the admin History (a Django username; default: the OS user).",
    )


def _add_targets(parser: CommandParser) -> None:
    parser.add_argument("ids", nargs="*", type=int, metavar="ID")
    _add_filters(parser)
    parser.add_argument("--all", action="store_true", help="Every pending dead letter.")
    parser.add_argument(
        "--dry-run", action="store_true", help="Show what would happen; change nothing."
    )


def _since(text: str) -> Any:
    try:
        return since_utc(text)
    except DurationError as exc:
        raise CommandError(f"--since: {exc}") from None


def _check_task(name: str) -> None:
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


def _get(pk: int) -> DeadLetter:
    try:
        return DeadLetter.objects.get(pk=pk)
    except DeadLetter.DoesNotExist:
        raise CommandError(f"no dead letter with id {pk}") from None


def _get_many(ids: Iterable[int]) -> list[DeadLetter]:
    wanted = list(dict.fromkeys(ids))
    found = DeadLetter.objects.in_bulk(wanted)
    missing = [pk for pk in wanted if pk not in found]
    if missing:
        raise CommandError(
            f"no dead letter with id {', '.join(map(str, missing))}; nothing changed"
        )
    return [found[pk] for pk in wanted]


def _chunks(items: Iterable[int], size: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC (``+00:00``), whatever the server's zone."""
    if value is None:
        return None
    return (value.astimezone(dt.UTC) if value.tzinfo else value).isoformat()


def _capped_count(queryset: QuerySet[DeadLetter], cap: int = 10_000) -> str:
    count = queryset.order_by()[: cap + 1].count()
    return f"more than {cap}" if count > cap else str(count)


def replay_note(result: ReplayResult, queue: str | None) -> str:
    """The History text of one replay."""
    where = f" to queue {queue}" if queue else ""
    note = f"; {result.message}" if result.message else ""
    return f"sent as task {result.task_id}{where}{note}"


def as_dict(dl: DeadLetter, *, full: bool = False) -> dict[str, Any]:
    """The JSON shape of ``list --json`` / ``show --json`` (payload redacted)."""
    data: dict[str, Any] = {
        "id": dl.pk,
        "task_name": dl.task_name,
        "task_id": dl.task_id,
        "args": redact(dl.args),
        "kwargs": redact(dl.kwargs),
        "exception_type": dl.exception_type,
        "exception_message": dl.exception_message,
        "attempts": dl.attempts,
        "status": dl.status,
        "reason": dl.reason,
        "failed_at": _iso(dl.last_failed_at),
        "first_failed_at": _iso(dl.first_failed_at),
        "entity": dl.entity,
        "operation": dl.operation,
        "queue": dl.queue,
        "replay_of": dl.replay_of_id,
        "replayed_task_id": dl.replayed_task_id,
        "replayed_at": _iso(dl.replayed_at),
        "payload_truncated": dl.payload_truncated,
    }
    if full:
        data.update(
            exchange=dl.exchange,
            routing_key=dl.routing_key,
            priority=dl.priority,
            headers=redact(dl.headers),
            worker_hostname=dl.worker_hostname,
            payload_note=dl.payload_note,
            traceback=dl.traceback,
            replays=list(dl.replays.values_list("pk", flat=True)),
        )
    return data


def _cut(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: list[DeadLetter]) -> str:
    if not rows:
        return "no dead letters match"
    header = ("ID", "STATUS", "FAILED AT (UTC)", "TRIES", "TASK", "EXCEPTION", "ENTITY")
    lines = [
        (
            str(dl.pk),
            dl.status,
            dl.last_failed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            str(dl.attempts),
            _cut(dl.task_name, 40),
            _cut(
                f"{short_type(dl.exception_type)}: "
                f"{describe_failure(dl.exception_type, dl.exception_message)}",
                60,
            ),
            _cut(dl.entity, 24),
        )
        for dl in rows
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *lines]
    )


def format_summary(groups: list[IncidentGroup], since: dt.datetime) -> str:
    if not groups:
        return f"no dead letters since {format_utc(since)}"
    header = ("COUNT", "PENDING", "TASK", "EXCEPTION", "REASON", "FIRST (UTC)", "LAST (UTC)")
    lines = [
        (
            str(g.count),
            str(g.pending),
            g.task_name,
            g.exception_type,
            g.reason,
            g.first_failed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            g.last_failed_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
        for g in groups
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    table = [
        "  ".join(
            cell.rjust(w) if i < 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *lines]
    ]
    total = sum(g.count for g in groups)
    pending = sum(g.pending for g in groups)
    table.append(
        f"{total} dead letters ({pending} pending) in {len(groups)} groups since "
        f"{format_utc(since)}. Narrow with: deadletter list --task T --exception E --reason R"
    )
    return "\n".join(table)


def format_detail(dl: DeadLetter, data: dict[str, Any] | None = None) -> str:
    data = dict(data) if data is not None else as_dict(dl, full=True)
    for key in ("failed_at", "first_failed_at", "replayed_at"):
        if data.get(key):
            data[key] = format_utc(getattr(dl, "last_failed_at" if key == "failed_at" else key))
    data["explanation"] = describe_failure(dl.exception_type, dl.exception_message)
    traceback = data.pop("traceback") or "(none)"
    payload = {key: data.pop(key) for key in ("args", "kwargs", "headers")}
    width = max(len(key) for key in data)
    lines = [f"{key.ljust(width)}  {'' if value is None else value}" for key, value in data.items()]
    for key, value in payload.items():
        lines.append(f"\n{key}:\n{json.dumps(value, indent=2, sort_keys=True)}")
    lines.append(f"\ntraceback:\n{traceback}")
    return "\n".join(lines)
